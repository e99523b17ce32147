//! Uploads (`policies[i].upload`) through a real Envoy: multipart uploads built by curl `-F` and
//! by Python's standard library, raw-body uploads named by Content-Disposition, each name rule,
//! and a 500 MB upload streamed through with Envoy's memory measured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::{Envoy, Options, Signed, SECRET};

const CONFIG: &str = r#"{
  "signature": {"secrets": [{"id": "primary", "env": "HMAC_SHARED_SECRET"}]},
  "policies": [
    {"name": "signed-uploads", "match": {"path_prefix": "/signed-uploads"},
     "upload": {"allowed_extensions": ["mp3", "png"]}},
    {"name": "uploads", "match": {"path_prefix": "/uploads"}, "signature": false,
     "upload": {"allowed_extensions": ["mp3", "wav", "flac", "ogg", "m4a", "aac", "wma", "png",
                                       "jpg", "jpeg", "gif", "webp", "pdf"]}},
    {"name": "open", "signature": false}
  ]
}"#;

const BOUNDARY: &str = "edgeWardenTestBoundary0123";

fn envoy() -> Envoy {
    Envoy::start(Options::with_config(CONFIG))
}

/// A real MP3: an ID3v2.4 tag, then MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, 417 bytes).
fn mp3() -> Vec<u8> {
    let mut b = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    for _ in 0..20 {
        b.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        b.extend_from_slice(&[0u8; 413]);
    }
    b
}

/// A Windows executable's first bytes, to be sent under an audio name.
const EXE: &[u8] = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8\x00";

/// Writes real files with Python's standard library (`wave` for a WAV, `zlib` for a PNG) and
/// the MP3, PDF and EXE above into `dir`.
fn write_files(dir: &Path) {
    let script = r#"
import struct, sys, wave, zlib
d = sys.argv[1]
w = wave.open(d + "/take.wav", "wb")
w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
w.writeframes(b"\x00\x00" * 8000)
w.close()
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
open(d + "/cover.png", "wb").write(png)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("song.mp3"), mp3()).unwrap();
    std::fs::write(
        dir.join("paper.pdf"),
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    )
    .unwrap();
    std::fs::write(dir.join("evil.exe"), EXE).unwrap();
}

/// `curl -F` with `fields` (`name=@path;type=...` or `name=value`): status and body.
fn curl(envoy: &Envoy, path: &str, fields: &[String]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-o", "-", "-w", "\n%{http_code}"]);
    for f in fields {
        cmd.arg("-F").arg(f);
    }
    cmd.arg(format!("http://127.0.0.1:{}{path}", envoy.port));
    let out = cmd.output().expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), body.to_string())
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    v["code"].as_str().unwrap_or("-").to_string()
}

/// A multipart/form-data body with one file part (its Content-Disposition parameters written
/// as given) and a text field.
fn form(disposition_params: &[u8], content_type: &str, content: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nmy take\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
    )
    .into_bytes();
    b.extend_from_slice(disposition_params);
    b.extend_from_slice(format!("\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
    b.extend_from_slice(content);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[test]
fn curl_form_uploads_of_real_files_reach_the_upstream() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let d = dir.path().display();
    for (field, size) in [
        (format!("file=@{d}/take.wav"), 16_044),
        (format!("file=@{d}/cover.png"), 0),
        (format!("file=@{d}/song.mp3;type=audio/mpeg"), mp3().len()),
        (format!("file=@{d}/paper.pdf"), 0),
    ] {
        let (status, body) = curl(&envoy, "/uploads", &[field.clone(), "title=a take".into()]);
        assert_eq!(status, 200, "{field}: {body}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(echo["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("multipart/form-data; boundary="));
        assert!(
            echo["body_length"].as_u64().unwrap() > size as u64,
            "{field}"
        );
        assert_eq!(echo["body_complete"], true);
    }
    // Two files in one request.
    let (status, body) = curl(
        &envoy,
        "/uploads",
        &[format!("a=@{d}/take.wav"), format!("b=@{d}/cover.png")],
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn curl_form_uploads_with_spoofed_magic_bytes_are_a_content_mismatch() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let d = dir.path().display();
    for field in [
        // An executable renamed to .mp3, with and without a declared audio type.
        format!("file=@{d}/evil.exe;filename=song.mp3;type=audio/mpeg"),
        format!("file=@{d}/evil.exe;filename=song.mp3"),
        // A real PNG sent as a WAV.
        format!("file=@{d}/cover.png;filename=take.wav;type=audio/wav"),
        // A real WAV whose declared type says PNG.
        format!("file=@{d}/take.wav;type=image/png"),
    ] {
        let (status, body) = curl(&envoy, "/uploads", std::slice::from_ref(&field));
        assert_eq!(
            (status, code_of(&body)),
            (415, "content_mismatch".into()),
            "{field}"
        );
    }
}

#[test]
fn python_standard_library_uploads_pass_and_a_spoofed_one_is_refused() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    // A form built with uuid, mimetypes and urllib.request only.
    let script = r#"
import json, mimetypes, sys, urllib.error, urllib.request, uuid
url, path, name = sys.argv[1:4]
data = open(path, "rb").read()
ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
b = uuid.uuid4().hex
body = b"".join([
    f"--{b}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\na take\r\n".encode(),
    f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n".encode(),
    f"Content-Type: {ctype}\r\n\r\n".encode(), data, f"\r\n--{b}--\r\n".encode()])
req = urllib.request.Request(url, data=body, method="POST",
                             headers={"Content-Type": f"multipart/form-data; boundary={b}"})
try:
    with urllib.request.urlopen(req) as r:
        status, answer = r.status, r.read()
except urllib.error.HTTPError as e:
    status, answer = e.code, e.read()
print(json.dumps({"status": status, "sent": len(body), "answer": json.loads(answer)}))
"#;
    let url = format!("http://127.0.0.1:{}/uploads", envoy.port);
    let run = |file: &str, name: &str| -> serde_json::Value {
        let out = Command::new("python3")
            .args(["-c", script, &url])
            .arg(dir.path().join(file))
            .arg(name)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for (file, name) in [
        ("take.wav", "take.wav"),
        ("cover.png", "cover.png"),
        ("song.mp3", "song.mp3"),
    ] {
        let r = run(file, name);
        assert_eq!(r["status"], 200, "{name}: {r}");
        // The upstream read every byte Python sent.
        assert_eq!(r["answer"]["body_length"], r["sent"], "{name}");
    }
    let r = run("evil.exe", "take.wav");
    assert_eq!(
        (r["status"].as_u64(), r["answer"]["code"].as_str()),
        (Some(415), Some("content_mismatch"))
    );
    let r = run("take.wav", "take.exe");
    assert_eq!(
        (r["status"].as_u64(), r["answer"]["code"].as_str()),
        (Some(415), Some("file_type_not_allowed"))
    );
}

#[test]
fn each_file_name_rule_is_enforced_and_the_name_is_never_echoed() {
    let envoy = envoy();
    let ct = multipart_type();
    let headers = [("content-type", ct.as_str())];
    let longest = format!("{}.mp3", "a".repeat(251));
    let too_long = format!("{}.mp3", "a".repeat(252));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("traversal", b"filename=\"../../etc/passwd.mp3\"".to_vec()),
        ("dot dot", b"filename=\"..song.mp3\"".to_vec()),
        ("slash", b"filename=\"music/song.mp3\"".to_vec()),
        ("backslash", b"filename=\"C:\\fakepath\\song.mp3\"".to_vec()),
        ("control character", b"filename=\"so\x01ng.mp3\"".to_vec()),
        ("NUL", b"filename=\"song\x00.mp3\"".to_vec()),
        (
            "percent-encoded traversal",
            b"filename=\"%2e%2e%2fsong.mp3\"".to_vec(),
        ),
        (
            "RFC 5987 traversal",
            b"filename*=UTF-8''..%2F..%2Fsong.mp3".to_vec(),
        ),
        (
            "over 255 bytes",
            format!("filename=\"{too_long}\"").into_bytes(),
        ),
        ("empty", b"filename=\"\"".to_vec()),
    ];
    for (what, params) in cases {
        let r = envoy.request(
            "POST",
            "/uploads",
            &headers,
            &form(&params, "audio/mpeg", &mp3()),
        );
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_file_name".into()),
            "{what}"
        );
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("passwd") && !body.contains("fakepath") && !body.contains("aaaa"),
            "{body}"
        );
    }
    for params in [
        format!("filename=\"{longest}\"").into_bytes(),
        "filename=\"naïve take.mp3\"".as_bytes().to_vec(),
        b"filename*=UTF-8''na%C3%AFve.mp3".to_vec(),
    ] {
        let r = envoy.request(
            "POST",
            "/uploads",
            &headers,
            &form(&params, "audio/mpeg", &mp3()),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&params));
    }
}

#[test]
fn extensions_and_declared_types_outside_the_allowlist_are_refused() {
    let envoy = envoy();
    let ct = multipart_type();
    let headers = [("content-type", ct.as_str())];
    for (params, declared) in [
        (&b"filename=\"setup.exe\""[..], "application/octet-stream"),
        (b"filename=\"song.mp3.php\"", "audio/mpeg"),
        (b"filename=\"song\"", "audio/mpeg"),
        (b"filename=\"song.mp3\"", "text/html"),
    ] {
        let r = envoy.request(
            "POST",
            "/uploads",
            &headers,
            &form(params, declared, &mp3()),
        );
        assert_eq!((r.status, r.code()), (415, "file_type_not_allowed".into()));
        assert!(r.json()["detail"].as_str().unwrap().contains("mp3, wav"));
    }
    // The signed route allows mp3 and png only.
    let body = form(
        b"filename=\"take.wav\"",
        "audio/wav",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
    );
    let s = Signed::new(SECRET, &body);
    let mut h = s.headers();
    h.push(("content-type", ct.as_str()));
    let r = envoy.request("POST", "/signed-uploads", &h, &body);
    assert_eq!((r.status, r.code()), (415, "file_type_not_allowed".into()));
    // Files in other multipart flavours would pass unread.
    let mixed = format!("multipart/mixed; boundary={BOUNDARY}");
    let r = envoy.request(
        "POST",
        "/uploads",
        &[("content-type", &mixed)],
        &form(b"filename=\"a.mp3\"", "audio/mpeg", &mp3()),
    );
    assert_eq!((r.status, r.code()), (415, "file_type_not_allowed".into()));
}

#[test]
fn a_raw_body_upload_is_named_by_content_disposition_and_typed_by_content_type() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let wav = std::fs::read(dir.path().join("take.wav")).unwrap();
    let put = |disposition: &str, content_type: &str, body: &[u8]| {
        envoy.request(
            "PUT",
            "/uploads/take",
            &[
                ("content-disposition", disposition),
                ("content-type", content_type),
            ],
            body,
        )
    };
    let r = put("attachment; filename=\"take.wav\"", "audio/wav", &wav);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_sha256"], hex::encode(Sha256::digest(&wav)));
    let r = put(
        "attachment; filename*=UTF-8''pr%C3%AAt.wav",
        "audio/x-wav",
        &wav,
    );
    assert_eq!(r.status, 200);
    let r = put("attachment; filename=\"take.wav\"", "audio/wav", EXE);
    assert_eq!((r.status, r.code()), (415, "content_mismatch".into()));
    let r = put("attachment; filename=\"take.wav\"", "audio/mpeg", &wav);
    assert_eq!((r.status, r.code()), (415, "content_mismatch".into()));
    let r = put("attachment; filename=\"take.html\"", "audio/wav", &wav);
    assert_eq!((r.status, r.code()), (415, "file_type_not_allowed".into()));
    let r = put("attachment; filename=\"../take.wav\"", "audio/wav", &wav);
    assert_eq!((r.status, r.code()), (400, "invalid_file_name".into()));
    // Not an upload (no file name): not inspected.
    let r = envoy.request(
        "PUT",
        "/uploads/take",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn broken_or_truncated_multipart_bodies_are_refused() {
    let envoy = envoy();
    let ct = multipart_type();
    let good = form(b"filename=\"song.mp3\"", "audio/mpeg", &mp3());
    let truncated = &good[..good.len() - 10];
    let r = envoy.request("POST", "/uploads", &[("content-type", &ct)], truncated);
    assert_eq!((r.status, r.code()), (400, "malformed_multipart".into()));
    let r = envoy.request(
        "POST",
        "/uploads",
        &[("content-type", "multipart/form-data")],
        &good,
    );
    assert_eq!((r.status, r.code()), (400, "malformed_multipart".into()));
    let junk = format!("--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--\r\n");
    let r = envoy.request(
        "POST",
        "/uploads",
        &[("content-type", &ct)],
        junk.as_bytes(),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_multipart".into()));
    let r = envoy.request("POST", "/uploads", &[("content-type", &ct)], &good);
    assert_eq!(r.status, 200);
}

#[test]
fn a_signed_upload_is_inspected_while_it_is_held_for_its_signature() {
    let envoy = envoy();
    let ct = multipart_type();
    for (content, expected) in [(mp3(), 200), (EXE.to_vec(), 415)] {
        let body = form(b"filename=\"song.mp3\"", "audio/mpeg", &content);
        let s = Signed::new(SECRET, &body);
        let mut h = s.headers();
        h.push(("content-type", ct.as_str()));
        let r = envoy.request("POST", "/signed-uploads", &h, &body);
        assert_eq!(r.status, expected);
        if expected == 200 {
            assert_eq!(r.json()["headers"]["x-edge-warden-key-id"], "primary");
            assert_eq!(r.json()["body_sha256"], hex::encode(Sha256::digest(&body)));
        } else {
            assert_eq!(r.code(), "content_mismatch");
        }
    }
}

#[test]
fn a_streamed_spoofed_file_is_refused_before_the_rest_of_its_body_is_sent() {
    let envoy = envoy();
    let ct = multipart_type();
    let part_head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"song.mp3\"\r\n\
         Content-Type: audio/mpeg\r\n\r\n"
    );
    // 10 MiB announced; only the part head, the executable's bytes and 64 KiB follow.
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /uploads HTTP/1.1\r\nhost: x\r\ncontent-type: {ct}\r\n\
         content-length: 10485760\r\n\r\n{part_head}"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(EXE).unwrap();
    stream.write_all(&[0u8; 64 * 1024]).unwrap();
    // Read what Envoy answers while the client still owes most of the body (until the reply's
    // body is in, or Envoy closes the connection).
    let mut answer = Vec::new();
    let mut piece = [0u8; 4096];
    while !answer.ends_with(b"}") {
        match stream.read(&mut piece) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&piece[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains("\"code\":\"content_mismatch\""), "{answer}");
}

/// A field of /proc/PID/status, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn a_500_mb_upload_streams_through_with_envoy_s_memory_growing_by_far_less() {
    const FILE_BYTES: u64 = 500 * 1024 * 1024;
    let envoy = envoy();
    let pid = envoy.pid();
    // One upload first, so that what the first request allocates is in the baseline.
    let ct = multipart_type();
    let r = envoy.request(
        "POST",
        "/uploads",
        &[("content-type", &ct)],
        &form(
            b"filename=\"a.wav\"",
            "audio/wav",
            b"RIFF\x24\x00\x00\x00WAVEfmt ",
        ),
    );
    assert_eq!(r.status, 200);
    let before = proc_kib(pid, "VmRSS");

    let part_head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\n"
    );
    let part_tail = format!("\r\n--{BOUNDARY}--\r\n");
    let length = part_head.len() as u64 + FILE_BYTES + part_tail.len() as u64;
    let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let head = format!(
        "POST /uploads/long HTTP/1.1\r\nhost: x\r\ncontent-type: {ct}\r\ncontent-length: {length}\r\n\
         connection: close\r\n\r\n{part_head}"
    );
    stream.write_all(head.as_bytes()).unwrap();
    // Generated on the fly: a WAV header, then 1 MiB blocks of bytes 0..=250 repeating.
    let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut sent = 0u64;
    let wav_head = b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00";
    stream.write_all(wav_head).unwrap();
    sent += wav_head.len() as u64;
    while sent < FILE_BYTES {
        let n = block.len().min((FILE_BYTES - sent) as usize);
        stream.write_all(&block[..n]).unwrap();
        sent += n as u64;
    }
    stream.write_all(part_tail.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        echo["body_length"].as_u64(),
        Some(length),
        "the upstream read the whole body"
    );

    let peak = proc_kib(pid, "VmHWM");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "500 MiB upload ({length} bytes): Envoy RSS before {before} KiB, peak {peak} KiB, \
         growth {growth} KiB"
    );
    assert!(
        growth < 64 * 1024,
        "Envoy grew by {growth} KiB for a {length}-byte upload"
    );
}
