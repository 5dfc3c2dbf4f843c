//! A blocking HTTP client for the API tests (run off the async runtime):
//! any method, headers, a body, and the answer whatever its status.

use serde_json::Value;

/// An answer: status, JSON body (or the text as a JSON string), headers.
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `method` (`GET`, `POST`, `PUT`, `DELETE`) to `url`.
pub async fn send(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
) -> Resp {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    agent.get(&url)
                } else {
                    agent.delete(&url)
                };
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                r.call()
            }
            _ => {
                let mut r = if method == "PUT" {
                    agent.put(&url)
                } else {
                    agent.post(&url)
                };
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                r.send(body.unwrap_or_default())
            }
        }
        .expect("http");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        }
    })
    .await
    .unwrap()
}
