//! The one phone number normaliser: anything a carrier, an admin or a web
//! page writes (national form, trunk prefix, international prefix, visual
//! separators) becomes E.164 (`+` and 8–15 digits) under one configurable
//! national numbering plan, or a clear error.

use serde::Deserialize;
use thiserror::Error;

use crate::error::Error as CrateError;

/// How national numbers of the home country are written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NumberingPlan {
    /// Country calling code, digits only (`7`, `1`, `44`).
    pub country_code: String,
    /// Digits dialled before a national number (`8` in Russia, `1` in NANP, `0` in the UK).
    pub trunk_prefix: String,
    /// Digits dialled before a country code (`810`, `011`, `00`).
    pub international_prefix: String,
    /// Length of a national significant number.
    pub national_digits: usize,
}

impl Default for NumberingPlan {
    fn default() -> Self {
        Self {
            country_code: "7".into(),
            trunk_prefix: "8".into(),
            international_prefix: "810".into(),
            national_digits: 10,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NumberError {
    #[error("empty number")]
    Empty,
    #[error("{0:?} has characters that are not part of a phone number")]
    BadCharacter(String),
    #[error("{0:?} is not a valid E.164 number (expected + and 8-15 digits)")]
    BadLength(String),
}

impl NumberingPlan {
    pub(crate) fn validate(&self) -> Result<(), CrateError> {
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if !digits(&self.country_code) || self.country_code.len() > 3 {
            return Err(CrateError::config(
                "numbering.country_code",
                "must be 1-3 digits",
            ));
        }
        if !self.trunk_prefix.is_empty() && !digits(&self.trunk_prefix) {
            return Err(CrateError::config(
                "numbering.trunk_prefix",
                "must be digits",
            ));
        }
        if !self.international_prefix.is_empty() && !digits(&self.international_prefix) {
            return Err(CrateError::config(
                "numbering.international_prefix",
                "must be digits",
            ));
        }
        if !(4..=14).contains(&self.national_digits) {
            return Err(CrateError::config(
                "numbering.national_digits",
                "must be 4-14",
            ));
        }
        Ok(())
    }

    /// Normalises `raw` to E.164 (`+74951234567`).
    ///
    /// Accepts a `tel:`/`sip:` user part with parameters, visual separators
    /// (space, `-`, `.`, `(`, `)`), a leading `+`, the international prefix,
    /// the trunk prefix, or a bare national number.
    pub fn normalize(&self, raw: &str) -> Result<String, NumberError> {
        let s = raw.trim();
        let s = s.strip_prefix("tel:").unwrap_or(s);
        // URI parameters (`;phone-context=...`, `;npdi`) are not part of the number.
        let s = s.split(';').next().unwrap_or("");
        if s.is_empty() {
            return Err(NumberError::Empty);
        }
        let plus = s.starts_with('+');
        let mut digits = String::with_capacity(s.len());
        for (i, c) in s.char_indices() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => {}
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(NumberError::BadCharacter(raw.into())),
            }
        }
        if digits.is_empty() {
            return Err(NumberError::Empty);
        }
        let international = if plus {
            digits
        } else if !self.international_prefix.is_empty()
            && digits.len() > self.international_prefix.len() + self.national_digits - 2
            && digits.starts_with(&self.international_prefix)
        {
            digits[self.international_prefix.len()..].to_string()
        } else if digits.len() == self.national_digits {
            format!("{}{}", self.country_code, digits)
        } else if !self.trunk_prefix.is_empty()
            && digits.len() == self.trunk_prefix.len() + self.national_digits
            && digits.starts_with(&self.trunk_prefix)
        {
            format!(
                "{}{}",
                self.country_code,
                &digits[self.trunk_prefix.len()..]
            )
        } else if digits.len() == self.country_code.len() + self.national_digits
            && digits.starts_with(&self.country_code)
        {
            digits
        } else {
            // Unknown national shape: take it as already international.
            digits
        };
        if !(8..=15).contains(&international.len()) || international.starts_with('0') {
            return Err(NumberError::BadLength(raw.into()));
        }
        Ok(format!("+{international}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ru() -> NumberingPlan {
        NumberingPlan::default()
    }

    fn nanp() -> NumberingPlan {
        NumberingPlan {
            country_code: "1".into(),
            trunk_prefix: "1".into(),
            international_prefix: "011".into(),
            national_digits: 10,
        }
    }

    #[test]
    fn russian_forms() {
        for raw in [
            "+7 (495) 123-45-67",
            "84951234567",
            "8 495 123 45 67",
            "74951234567",
            "4951234567",
            "+74951234567",
            "81074951234567",
            "tel:+7-495-123-45-67;phone-context=x",
        ] {
            assert_eq!(ru().normalize(raw).as_deref(), Ok("+74951234567"), "{raw}");
        }
    }

    #[test]
    fn nanp_forms() {
        for raw in [
            "(415) 555-0100",
            "415.555.0100",
            "1-415-555-0100",
            "+1 415 555 0100",
            "14155550100",
        ] {
            assert_eq!(
                nanp().normalize(raw).as_deref(),
                Ok("+14155550100"),
                "{raw}"
            );
        }
        assert_eq!(
            nanp().normalize("011 44 20 7946 0958").as_deref(),
            Ok("+442079460958")
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(ru().normalize(""), Err(NumberError::Empty));
        assert_eq!(ru().normalize(" ; "), Err(NumberError::Empty));
        assert!(matches!(
            ru().normalize("+7495abc"),
            Err(NumberError::BadCharacter(_))
        ));
        assert!(matches!(
            ru().normalize("12345"),
            Err(NumberError::BadLength(_))
        ));
        assert!(matches!(
            ru().normalize("+1234567890123456"),
            Err(NumberError::BadLength(_))
        ));
        assert!(matches!(
            ru().normalize("7+495"),
            Err(NumberError::BadCharacter(_))
        ));
    }
}
