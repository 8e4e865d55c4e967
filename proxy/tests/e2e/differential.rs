//! The edge's HTTP/1.1 codec against a second parser (Node's llhttp, in
//! its strict mode) on thousands of requests made by editing valid and
//! hostile ones byte by byte: where llhttp refuses a request, or reads its
//! body to a different length, the edge must refuse it. The codec's side
//! is its offline reading (`edgeplane_proxy::http::h1::offline`: the same
//! parse and body decoder the connection runs, in the same order); the
//! process-level twin is `hostile::a_second_parser…`.

use edgeplane_proxy::http::h1::offline::{first_request, Reading};

/// llhttp's reading of each byte string (see `js/llhttp.js`).
pub fn llhttp(inputs: &[&[u8]]) -> Vec<serde_json::Value> {
    use std::io::Write;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/js/llhttp.js");
    let hex: Vec<String> = inputs
        .iter()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .collect();
    let mut child = std::process::Command::new("node")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (scripts/setup.sh installs nodejs)");
    let mut stdin = child.stdin.take().unwrap();
    let json = serde_json::to_string(&hex).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(json.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A small seeded generator (xorshift64*), so a failure names its input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that change how a head or a body is read.
const SHARP: &[u8] = b" \t\r\n:;,0129aAfFzZ-_\"%/?#\x00\x7f\x80\xff";

/// One to three edits of `seed`: a byte replaced, inserted or deleted, a
/// line doubled, a letter's case changed.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if v.is_empty() {
            break;
        }
        let at = rng.below(v.len());
        match rng.below(5) {
            0 => v[at] = SHARP[rng.below(SHARP.len())],
            1 => v.insert(at, SHARP[rng.below(SHARP.len())]),
            2 => {
                v.remove(at);
            }
            3 => {
                let start = v[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let end = v[at..].iter().position(|&b| b == b'\n').map_or(v.len(), |i| at + i + 1);
                let line = v[start..end].to_vec();
                v.splice(end..end, line);
            }
            _ => v[at] ^= 0x20 * u8::from(v[at].is_ascii_alphabetic()),
        }
    }
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let h = "Host: app1.repl.co\r\n";
    [
        format!("GET /a?b=c HTTP/1.1\r\n{h}Accept: */*\r\n\r\n"),
        format!("POST /s HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n{h}\r\n"),
        format!("POST /s HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        format!("POST /s HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
        format!(
            "POST /s HTTP/1.1\r\n{h}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
        format!("GET http://app1.repl.co/p HTTP/1.1\r\n{h}\r\n"),
        format!("GET / HTTP/1.0\r\n{h}Connection: keep-alive\r\n\r\n"),
        format!("PUT /x HTTP/1.1\r\n{h}Content-Length: 0\r\nCookie: a=b; c=d\r\n\r\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

#[test]
fn where_llhttp_refuses_a_mutated_request_or_frames_it_otherwise_the_edge_refuses_it() {
    const PER_SEED: usize = 12000;
    let mut rng = Rng(0x5eed_ed6e_91a4_e000);
    let inputs: Vec<Vec<u8>> = seeds()
        .iter()
        .flat_map(|s| (0..PER_SEED).map(|_| mutate(s, &mut rng)).collect::<Vec<_>>())
        .collect();
    let theirs = llhttp(&inputs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let (mut taken, mut stricter, mut defects) = (0, 0, Vec::new());
    for (input, t) in inputs.iter().zip(&theirs) {
        let first = &t["messages"][0];
        let llhttp_body = (first["complete"] == true).then(|| first["body"].as_u64().unwrap());
        match (first_request(input, &[]), llhttp_body) {
            (Reading::Message { body, method, .. }, Some(n)) => {
                taken += 1;
                if body.len() as u64 != n || first["method"] != method.as_str() {
                    defects.push((
                        format!("framed otherwise (edge {} bytes, llhttp {n})", body.len()),
                        input,
                    ));
                }
            }
            (Reading::Message { .. }, None) => defects.push((format!("llhttp refuses: {}", t["error"]), input)),
            (_, Some(_)) => stricter += 1,
            _ => {}
        }
        if defects.len() > 20 {
            break;
        }
    }
    println!(
        "differential (mutated): {} requests, {taken} taken by both, {stricter} refused by the edge alone",
        inputs.len()
    );
    let shown: Vec<String> = defects
        .iter()
        .map(|(d, i)| format!("{d}: {:?}", String::from_utf8_lossy(i)))
        .collect();
    assert!(defects.is_empty(), "{}", shown.join("\n"));
    assert!(
        taken > 1000,
        "too few requests survive the edits to test framing: {taken}"
    );
}
