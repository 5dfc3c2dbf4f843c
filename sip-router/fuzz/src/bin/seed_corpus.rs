//! Writes the RFC 4475 torture messages into a corpus directory (the
//! fuzzer's starting inputs): `seed_corpus DIR`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/sip_message".into());
    std::fs::create_dir_all(&dir)?;
    let mut n = 0;
    for case in sipx_testkit::rfc4475::classified() {
        std::fs::write(format!("{dir}/rfc4475-{}", case.name), case.bytes)?;
        n += 1;
    }
    println!("{n} RFC 4475 messages written to {dir}");
    Ok(())
}
