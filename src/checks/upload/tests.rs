use super::*;

fn policy(extensions: &[&str]) -> UploadPolicy {
    let raw = RawUpload {
        allowed_extensions: extensions.iter().map(|e| e.to_string()).collect(),
        max_file_bytes: 1024 * 1024,
        max_files: 3,
        max_parts: 5,
        max_part_header_bytes: 1024,
    };
    compile_upload(&raw, "policies[0].upload").unwrap()
}

fn all_audio_and_images() -> UploadPolicy {
    policy(&[
        "mp3", "wav", "flac", "ogg", "m4a", "aac", "wma", "png", "jpg", "jpeg", "gif", "webp",
        "pdf",
    ])
}

fn headers(pairs: &[(&str, &[u8])]) -> RequestHeaders {
    RequestHeaders::new(
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect(),
    )
}

const BOUNDARY: &str = "----edgewardenBoundary7MA4YWxk";

fn multipart_headers(boundary: &str) -> RequestHeaders {
    let ct = format!("multipart/form-data; boundary={boundary}");
    headers(&[("content-type", ct.as_bytes())])
}

/// One part: its header lines (without CRLF) and content.
struct Part<'a> {
    lines: Vec<Vec<u8>>,
    content: &'a [u8],
}

fn file<'a>(filename: &str, content_type: &str, content: &'a [u8]) -> Part<'a> {
    let mut disposition = b"Content-Disposition: form-data; name=\"file\"; filename=\"".to_vec();
    disposition.extend_from_slice(filename.as_bytes());
    disposition.push(b'"');
    let mut lines = vec![disposition];
    if !content_type.is_empty() {
        lines.push(format!("Content-Type: {content_type}").into_bytes());
    }
    Part { lines, content }
}

fn field<'a>(name: &str, content: &'a [u8]) -> Part<'a> {
    Part {
        lines: vec![format!("Content-Disposition: form-data; name=\"{name}\"").into_bytes()],
        content,
    }
}

fn body(boundary: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        for line in &p.lines {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p.content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Starts an inspector over `headers` and feeds `chunks`, then finishes.
fn run(policy: &UploadPolicy, headers: &RequestHeaders, chunks: &[&[u8]]) -> Result<(), Reject> {
    let mut inspector = start(policy, headers)?.expect("an upload");
    for c in chunks {
        inspector.feed(c)?;
    }
    inspector.finish()
}

fn run_multipart(policy: &UploadPolicy, body: &[u8]) -> Result<(), Reject> {
    run(policy, &multipart_headers(BOUNDARY), &[body])
}

fn samples() -> Vec<(Kind, &'static str, &'static str, Vec<u8>)> {
    let pad = |head: &[u8]| {
        let mut v = head.to_vec();
        v.extend_from_slice(&[0x11; 64]);
        v
    };
    vec![
        (
            Kind::Mp3,
            "song.mp3",
            "audio/mpeg",
            pad(b"ID3\x04\x00\x00\x00\x00\x00\x21"),
        ),
        (
            Kind::Mp3,
            "frames.mp3",
            "audio/mpeg",
            pad(&[0xFF, 0xFB, 0x90, 0x64]),
        ),
        // MPEG-1 Layer III with CRC: not in infer's list, filled here.
        (
            Kind::Mp3,
            "crc.mp3",
            "audio/mp3",
            pad(&[0xFF, 0xFA, 0x90, 0x64]),
        ),
        (
            Kind::Wav,
            "a.wav",
            "audio/wav",
            pad(b"RIFF\x24\x00\x00\x00WAVEfmt "),
        ),
        (
            Kind::Flac,
            "a.flac",
            "audio/flac",
            pad(b"fLaC\x00\x00\x00\x22"),
        ),
        (
            Kind::Ogg,
            "a.ogg",
            "audio/ogg",
            pad(b"OggS\x00\x02\x00\x00"),
        ),
        (
            Kind::M4a,
            "a.m4a",
            "audio/mp4",
            pad(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom\x00\x00\x00\x00"),
        ),
        // `mp42` first, `M4A ` among the compatible brands: filled here.
        (
            Kind::M4a,
            "b.m4a",
            "audio/x-m4a",
            pad(b"\x00\x00\x00\x1cftypmp42\x00\x00\x00\x00mp42M4A isom"),
        ),
        (
            Kind::Aac,
            "a.aac",
            "audio/aac",
            pad(&[0xFF, 0xF1, 0x50, 0x80]),
        ),
        (Kind::Aac, "adif.aac", "audio/aac", pad(b"ADIF\x00\x00")),
        (
            Kind::Wma,
            "a.wma",
            "audio/x-ms-wma",
            pad(&[
                0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11, 0xA6, 0xD9, 0x00, 0xAA, 0x00, 0x62,
                0xCE, 0x6C,
            ]),
        ),
        (
            Kind::Png,
            "a.png",
            "image/png",
            pad(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        ),
        (
            Kind::Jpeg,
            "a.jpg",
            "image/jpeg",
            pad(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F']),
        ),
        (
            Kind::Jpeg,
            "a.JPEG",
            "image/jpeg",
            pad(&[0xFF, 0xD8, 0xFF, 0xE1]),
        ),
        (
            Kind::Gif,
            "a.gif",
            "image/gif",
            pad(b"GIF89a\x01\x00\x01\x00"),
        ),
        (
            Kind::Webp,
            "a.webp",
            "image/webp",
            pad(b"RIFF\x24\x00\x00\x00WEBPVP8 "),
        ),
        (
            Kind::Pdf,
            "a.pdf",
            "application/pdf",
            pad(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
        ),
    ]
}

#[test]
fn every_kind_passes_with_its_magic_number_its_type_and_a_generic_type() {
    let p = all_audio_and_images();
    for (kind, name, media_type, bytes) in samples() {
        assert!(magic_matches(kind, &bytes), "{kind:?} {name}");
        for declared in [media_type, "application/octet-stream", ""] {
            let b = body(BOUNDARY, &[file(name, declared, &bytes)]);
            assert_eq!(run_multipart(&p, &b), Ok(()), "{name} as {declared:?}");
        }
    }
}

#[test]
fn no_kind_s_magic_number_passes_as_another_kind() {
    for (kind, name, _, bytes) in samples() {
        for other in KINDS.iter().map(|k| k.kind).filter(|k| *k != kind) {
            assert!(!magic_matches(other, &bytes), "{name} passes as {other:?}");
        }
    }
}

#[test]
fn spoofed_magic_numbers_are_a_content_mismatch() {
    let p = all_audio_and_images();
    let exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff";
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let cases: [(&str, &str, &[u8]); 5] = [
        ("song.mp3", "audio/mpeg", exe),
        ("song.mp3", "application/octet-stream", png),
        ("photo.png", "image/png", b"<?php system($_GET['c']); ?>"),
        ("doc.pdf", "application/pdf", b""),
        ("a.wav", "audio/wav", b"RIFF\x24\x00\x00\x00WEBPVP8 "),
    ];
    for (name, declared, bytes) in cases {
        let b = body(BOUNDARY, &[file(name, declared, bytes)]);
        assert_eq!(
            run_multipart(&p, &b),
            Err(Reject::ContentMismatch),
            "{name} {declared}"
        );
    }
}

#[test]
fn a_declared_type_of_another_allowed_kind_is_a_content_mismatch() {
    let p = all_audio_and_images();
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let b = body(BOUNDARY, &[file("photo.mp3", "image/png", png)]);
    assert_eq!(run_multipart(&p, &b), Err(Reject::ContentMismatch));
}

#[test]
fn extensions_and_types_outside_the_allowlist_are_not_allowed() {
    let p = policy(&["mp3", "wav"]);
    let id3 = b"ID3\x04\x00\x00\x00\x00\x00\x21";
    let not_allowed = Err(Reject::FileTypeNotAllowed {
        allowed: "mp3, wav".into(),
    });
    for name in [
        "a.exe",
        "a.png",
        "mp3",
        ".mp3",
        "a.mp3.",
        "a.mp3 ",
        "a.mp3.php",
    ] {
        let b = body(BOUNDARY, &[file(name, "", id3)]);
        assert_eq!(run_multipart(&p, &b), not_allowed, "{name:?}");
    }
    for declared in [
        "text/plain",
        "image/png",
        "audio/flac",
        "multipart/mixed; boundary=x",
    ] {
        let b = body(BOUNDARY, &[file("a.mp3", declared, id3)]);
        assert_eq!(run_multipart(&p, &b), not_allowed, "{declared}");
    }
    // Extensions match ignoring case; the declared type too.
    let b = body(BOUNDARY, &[file("LOUD.MP3", "Audio/MPEG", id3)]);
    assert_eq!(run_multipart(&p, &b), Ok(()));
    // Other multipart flavours would carry files past the checks.
    let h = headers(&[("content-type", b"multipart/mixed; boundary=abc")]);
    assert_eq!(start(&p, &h).map(|_| ()), not_allowed);
}

#[test]
fn each_bad_name_is_refused_and_never_echoed() {
    let p = policy(&["mp3"]);
    let id3 = b"ID3\x04\x00\x00\x00\x00\x00\x21";
    let long = format!("{}.mp3", "a".repeat(251));
    let too_long = format!("{}.mp3", "a".repeat(252));
    assert_eq!(long.len(), 255);
    let cases = [
        "../../etc/passwd.mp3",
        "..mp3.mp3",
        "dir/a.mp3",
        "C:\\\\fakepath\\\\a.mp3",
        "a\tb.mp3",
        "%2e%2e%2fa.mp3",
        "a%2Fb.mp3",
        "a%00.mp3",
        "x\u{202E}3pm.exe.mp3",
        "a\u{FF0F}b.mp3",
        "",
        too_long.as_str(),
    ];
    for name in cases {
        let b = body(BOUNDARY, &[file(name, "audio/mpeg", id3)]);
        let got = run_multipart(&p, &b);
        assert!(
            matches!(got, Err(Reject::InvalidFileName { .. })),
            "{name:?}: {got:?}"
        );
        let detail = got.unwrap_err().detail();
        assert!(name.is_empty() || !detail.contains(name), "{detail}");
    }
    let b = body(BOUNDARY, &[file(&long, "audio/mpeg", id3)]);
    assert_eq!(run_multipart(&p, &b), Ok(()));
}

#[test]
fn a_backslash_hidden_by_quoted_string_unescaping_is_still_a_separator() {
    // `\a` unescapes to `a`, but an upstream that does not unescape sees `..\a.mp3`.
    let got = check_name(b"..\\a.mp3");
    assert!(matches!(got, Err(Reject::InvalidFileName { .. })));
    let p = policy(&["mp3"]);
    let b = body(BOUNDARY, &[file("x\\a.mp3", "audio/mpeg", b"ID3\x04")]);
    assert!(matches!(
        run_multipart(&p, &b),
        Err(Reject::InvalidFileName { .. })
    ));
}

#[test]
fn control_characters_and_nul_in_a_multipart_name_are_a_bad_name() {
    let p = policy(&["mp3"]);
    for name in ["a\u{0}.mp3", "a\u{1}.mp3", "a\rb.mp3", "a\u{7f}.mp3"] {
        let b = body(BOUNDARY, &[file(name, "audio/mpeg", b"ID3\x04")]);
        let got = run_multipart(&p, &b);
        assert!(
            matches!(got, Err(Reject::InvalidFileName { .. })),
            "{name:?}: {got:?}"
        );
    }
}

#[test]
fn control_characters_and_nul_are_refused_in_raw_names() {
    for name in [
        &b"a\x00.mp3"[..],
        b"a\r\n.mp3",
        b"a\x7f.mp3",
        b"\xc2\x85a.mp3",
        b"\xff.mp3",
    ] {
        assert!(
            matches!(check_name(name), Err(Reject::InvalidFileName { .. })),
            "{name:?}"
        );
    }
    assert_eq!(check_name("naïve.mp3".as_bytes()), Ok("naïve.mp3"));
}

#[test]
fn rfc_5987_names_are_decoded_and_checked_too() {
    let p = policy(&["mp3"]);
    let id3: &[u8] = b"ID3\x04\x00\x00\x00\x00\x00\x21";
    let part = |disposition: &str| Part {
        lines: vec![
            format!("Content-Disposition: form-data; name=\"f\"; {disposition}").into_bytes(),
        ],
        content: id3,
    };
    let ok = [
        "filename=\"naïve.mp3\"",
        "filename*=UTF-8''na%C3%AFve.mp3",
        "filename*=iso-8859-1'en'caf%E9.mp3",
        "filename=\"a.mp3\"; filename*=UTF-8''b.mp3",
    ];
    for d in ok {
        assert_eq!(
            run_multipart(&p, &body(BOUNDARY, &[part(d)])),
            Ok(()),
            "{d}"
        );
    }
    let bad_name = [
        "filename*=UTF-8''..%2Fa.mp3",
        "filename*=UTF-8''a%5Cb.mp3",
        "filename*=UTF-8''%252e%252e%252fa.mp3",
        "filename*=UTF-8''a%00.mp3",
        "filename*=UTF-8''%FF.mp3",
        "filename*=UTF-16''a.mp3",
        "filename*=UTF-8''a%2.mp3",
        "filename=\"a.mp3\"; filename*=UTF-8''..%2F..%2Fa.mp3",
    ];
    for d in bad_name {
        let got = run_multipart(&p, &body(BOUNDARY, &[part(d)]));
        assert!(
            matches!(got, Err(Reject::InvalidFileName { .. })),
            "{d}: {got:?}"
        );
    }
    // Both names must be allowed, and of one kind.
    let got = run_multipart(
        &p,
        &body(
            BOUNDARY,
            &[part("filename=\"a.mp3\"; filename*=UTF-8''a.exe")],
        ),
    );
    assert!(
        matches!(got, Err(Reject::FileTypeNotAllowed { .. })),
        "{got:?}"
    );
    let two = policy(&["mp3", "png"]);
    let got = run_multipart(
        &two,
        &body(
            BOUNDARY,
            &[part("filename=\"a.mp3\"; filename*=UTF-8''a.png")],
        ),
    );
    assert_eq!(got, Err(Reject::ContentMismatch));
    // Two `filename`s: which one would the upstream read?
    let got = run_multipart(
        &p,
        &body(BOUNDARY, &[part("filename=\"a.mp3\"; filename=\"b.exe\"")]),
    );
    assert!(
        matches!(got, Err(Reject::MalformedMultipart { .. })),
        "{got:?}"
    );
}

/// Two files and a field, with a preamble, padding after a boundary and an epilogue.
fn mixed_body() -> Vec<u8> {
    let mp3 = [
        b"ID3\x04\x00\x00\x00\x00\x00\x21".as_slice(),
        &[0x42; 3000],
        b"\r\n--",
        b"\r\n-",
    ]
    .concat();
    let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &[0x00; 10], b"\r"].concat();
    let mut b = b"this preamble is ignored\r\n".to_vec();
    let parts = body(
        BOUNDARY,
        &[
            field("title", b"a title with \r\n--almost a boundary"),
            file("song.mp3", "audio/mpeg", &mp3),
            file("cover.png", "image/png", &png),
        ],
    );
    b.extend_from_slice(&parts);
    b.extend_from_slice(b"epilogue, ignored too");
    b
}

#[test]
fn a_body_split_at_every_offset_gives_the_same_verdict() {
    let p = policy(&["mp3", "png"]);
    let good = mixed_body();
    let spoofed = {
        let mut b = mixed_body();
        let at = memmem::find(&b, b"\x89PNG").unwrap();
        b[at] = b'X';
        b
    };
    for (b, expected) in [(&good, Ok(())), (&spoofed, Err(Reject::ContentMismatch))] {
        assert_eq!(run_multipart(&p, b), expected);
        for at in 0..=b.len() {
            let (x, y) = b.split_at(at);
            assert_eq!(
                run(&p, &multipart_headers(BOUNDARY), &[x, y]),
                expected,
                "split at {at}"
            );
        }
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(run(&p, &multipart_headers(BOUNDARY), &bytes), expected);
        for size in [2, 3, 7, 13, 64, 1000] {
            let chunks: Vec<&[u8]> = b.chunks(size).collect();
            assert_eq!(
                run(&p, &multipart_headers(BOUNDARY), &chunks),
                expected,
                "{size}"
            );
        }
    }
}

#[test]
fn padding_after_a_boundary_and_a_body_opening_with_crlf_are_accepted() {
    let p = policy(&["mp3"]);
    let b = format!(
        "\r\n--{BOUNDARY}  \t\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.mp3\"\r\n\r\nID3\x04\r\n--{BOUNDARY}--"
    );
    assert_eq!(run_multipart(&p, b.as_bytes()), Ok(()));
    let quoted = headers(&[(
        "content-type",
        format!("multipart/form-data; charset=utf-8; boundary=\"{BOUNDARY}\"").as_bytes(),
    )]);
    assert_eq!(run(&p, &quoted, &[b.as_bytes()]), Ok(()));
}

#[test]
fn broken_multipart_bodies_are_malformed() {
    let p = policy(&["mp3"]);
    let good = body(BOUNDARY, &[file("a.mp3", "audio/mpeg", b"ID3\x04")]);
    let truncated = &good[..good.len() - 4];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", truncated.to_vec()),
        ("empty", Vec::new()),
        ("no boundary at all", b"just some bytes".to_vec()),
        ("boundary line with junk", format!("--{BOUNDARY}junk\r\n\r\n").into_bytes()),
        ("bare LF after boundary", format!("--{BOUNDARY}\n\r\n").into_bytes()),
        (
            "no disposition",
            format!("--{BOUNDARY}\r\nContent-Type: audio/mpeg\r\n\r\nID3\r\n--{BOUNDARY}--").into_bytes(),
        ),
        (
            "disposition not form-data",
            format!("--{BOUNDARY}\r\nContent-Disposition: attachment; filename=\"a.mp3\"\r\n\r\nID3\r\n--{BOUNDARY}--").into_bytes(),
        ),
        (
            "two dispositions",
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b; filename=\"a.exe\"\r\n\r\nID3\r\n--{BOUNDARY}--").into_bytes(),
        ),
        (
            "base64 content",
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=a; filename=\"a.mp3\"\r\nContent-Transfer-Encoding: base64\r\n\r\nSUQzBA==\r\n--{BOUNDARY}--").into_bytes(),
        ),
        (
            "header line without a colon",
            format!("--{BOUNDARY}\r\nnot a header\r\n\r\nID3\r\n--{BOUNDARY}--").into_bytes(),
        ),
        (
            "headers over the cap",
            format!("--{BOUNDARY}\r\nX-Pad: {}\r\n\r\n", "a".repeat(2000)).into_bytes(),
        ),
    ];
    for (what, b) in cases {
        let got = run_multipart(&p, &b);
        assert!(
            matches!(got, Err(Reject::MalformedMultipart { .. })),
            "{what}: {got:?}"
        );
    }
    for ct in [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=\"has\rcr\"",
        "multipart/form-data; boundary=ends-in-space\" \"",
    ] {
        let h = headers(&[("content-type", ct.as_bytes())]);
        let got = start(&p, &h).map(|_| ());
        assert!(
            matches!(got, Err(Reject::MalformedMultipart { .. })),
            "{ct}: {got:?}"
        );
    }
    let seventy_one = "b".repeat(71);
    let got = start(&p, &multipart_headers(&seventy_one)).map(|_| ());
    assert!(matches!(got, Err(Reject::MalformedMultipart { .. })));
    assert!(start(&p, &multipart_headers(&"b".repeat(70)))
        .unwrap()
        .is_some());
}

#[test]
fn a_rejection_sticks_for_later_chunks() {
    let p = policy(&["mp3"]);
    let mut i = start(&p, &multipart_headers(BOUNDARY)).unwrap().unwrap();
    assert!(i.feed(b"--wrong\r\n").is_ok());
    let bad = format!("\r\n--{BOUNDARY}junk");
    assert!(i.feed(bad.as_bytes()).is_err());
    assert!(i.feed(b"more").is_err());
    assert!(i.finish().is_err());
}

#[test]
fn files_and_parts_are_counted_against_their_caps() {
    let p = policy(&["mp3"]);
    let id3: &[u8] = b"ID3\x04";
    let four_files: Vec<Part> = (0..4).map(|i| file(&format!("{i}.mp3"), "", id3)).collect();
    assert_eq!(
        run_multipart(&p, &body(BOUNDARY, &four_files)),
        Err(Reject::TooManyParts {
            what: "files",
            limit: 3
        })
    );
    let three_files: Vec<Part> = (0..3).map(|i| file(&format!("{i}.mp3"), "", id3)).collect();
    assert_eq!(run_multipart(&p, &body(BOUNDARY, &three_files)), Ok(()));
    let six_fields: Vec<Part> = (0..6).map(|i| field(&format!("f{i}"), b"v")).collect();
    assert_eq!(
        run_multipart(&p, &body(BOUNDARY, &six_fields)),
        Err(Reject::TooManyParts {
            what: "parts",
            limit: 5
        })
    );
}

#[test]
fn a_file_over_the_cap_is_too_large_and_a_raw_length_over_it_is_refused_from_the_headers() {
    let p = policy(&["mp3"]);
    let mut big = b"ID3\x04".to_vec();
    big.resize(1024 * 1024 + 1, 0);
    let b = body(BOUNDARY, &[file("a.mp3", "", &big)]);
    assert_eq!(
        run_multipart(&p, &b),
        Err(Reject::FileTooLarge { limit: 1024 * 1024 })
    );
    big.pop();
    let b = body(BOUNDARY, &[file("a.mp3", "", &big)]);
    assert_eq!(run_multipart(&p, &b), Ok(()));

    let raw = |len: &str| {
        headers(&[
            ("content-type", b"audio/mpeg"),
            ("content-disposition", b"attachment; filename=\"a.mp3\""),
            ("content-length", len.as_bytes()),
        ])
    };
    assert_eq!(
        start(&p, &raw("1048577")).map(|_| ()),
        Err(Reject::FileTooLarge { limit: 1024 * 1024 })
    );
    assert_eq!(run(&p, &raw("1048576"), &[&big[..10], &big[10..]]), Ok(()));
    big.push(0);
    assert_eq!(
        run(&p, &raw("5"), &[&big]),
        Err(Reject::FileTooLarge { limit: 1024 * 1024 })
    );
}

#[test]
fn raw_body_uploads_are_named_by_content_disposition_and_typed_by_content_type() {
    let p = policy(&["mp3", "pdf"]);
    let raw = |ct: &str, cd: &[u8]| {
        headers(&[("content-type", ct.as_bytes()), ("content-disposition", cd)])
    };
    let id3: &[u8] = b"ID3\x04\x00";
    assert_eq!(
        run(
            &p,
            &raw("audio/mpeg", b"attachment; filename=\"a.mp3\""),
            &[id3]
        ),
        Ok(())
    );
    assert_eq!(
        run(
            &p,
            &raw("audio/mpeg", b"inline; filename*=UTF-8''%C3%A9.mp3"),
            &[b"I", b"D3"]
        ),
        Ok(())
    );
    assert_eq!(
        run(
            &p,
            &raw("application/pdf", b"attachment; filename=\"a.mp3\""),
            &[id3]
        ),
        Err(Reject::ContentMismatch)
    );
    assert_eq!(
        run(
            &p,
            &raw("audio/mpeg", b"attachment; filename=\"a.mp3\""),
            &[b"%PDF-1.4"]
        ),
        Err(Reject::ContentMismatch)
    );
    assert_eq!(
        run(
            &p,
            &raw("audio/mpeg", b"attachment; filename=\"a.mp3\""),
            &[]
        ),
        Err(Reject::ContentMismatch)
    );
    for cd in [
        &b"attachment; filename=\"../a.mp3\""[..],
        b"attachment; filename=\"a\x00.mp3\"",
        b"attachment; filename=\"\"",
    ] {
        let got = start(&p, &raw("audio/mpeg", cd)).map(|_| ());
        assert!(matches!(got, Err(Reject::InvalidFileName { .. })), "{cd:?}");
    }
    let got = start(&p, &raw("text/html", b"attachment; filename=\"a.mp3\"")).map(|_| ());
    assert!(matches!(got, Err(Reject::FileTypeNotAllowed { .. })));
    let got = start(&p, &raw("audio/mpeg", b"attachment; filename=\"a.html\"")).map(|_| ());
    assert!(matches!(got, Err(Reject::FileTypeNotAllowed { .. })));
    let two = headers(&[
        ("content-disposition", b"attachment; filename=\"a.mp3\""),
        ("content-disposition", b"attachment; filename=\"a.exe\""),
    ]);
    assert!(matches!(
        start(&p, &two).map(|_| ()),
        Err(Reject::DuplicatedHeader { .. })
    ));
}

#[test]
fn requests_that_are_not_uploads_are_not_inspected() {
    let p = policy(&["mp3"]);
    for h in [
        headers(&[]),
        headers(&[("content-type", b"application/json")]),
        headers(&[("content-type", b"audio/mpeg")]),
        headers(&[("content-type", b"\xff garbage")]),
        headers(&[("content-disposition", b"inline")]),
        headers(&[("content-disposition", b"attachment; name=\"x\"")]),
    ] {
        assert!(start(&p, &h).unwrap().is_none());
    }
}

#[test]
fn memory_stays_bounded_whatever_the_body_size() {
    let p = policy(&["mp3"]);
    let mut i = start(&p, &multipart_headers(BOUNDARY)).unwrap().unwrap();
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.mp3\"\r\n\r\nID3\x04"
    );
    i.feed(head.as_bytes()).unwrap();
    // Content full of CRs and near-boundaries, 900 KB in 9 000-byte chunks.
    let mut chunk = Vec::new();
    while chunk.len() < 9000 {
        chunk.extend_from_slice(b"\r\n--");
        chunk.extend_from_slice(&BOUNDARY.as_bytes()[..BOUNDARY.len() / 2]);
        chunk.push(b'\r');
    }
    // Small chunks first: the magic window fills a few bytes at a time.
    for piece in chunk[..1500].chunks(3) {
        i.feed(piece).unwrap();
        assert!(i.held_bytes() <= MAGIC_WINDOW + 1024 + BOUNDARY.len() + 4);
    }
    for _ in 0..100 {
        i.feed(&chunk).unwrap();
        assert!(
            i.held_bytes() <= MAGIC_WINDOW + 1024 + BOUNDARY.len() + 4,
            "{}",
            i.held_bytes()
        );
    }
    i.feed(format!("\r\n--{BOUNDARY}--").as_bytes()).unwrap();
    i.finish().unwrap();
}

fn raw_upload(json: &str) -> RawUpload {
    serde_json::from_str(json).unwrap()
}

#[test]
fn invalid_upload_settings_are_refused_naming_the_field() {
    let cases = [
        (
            r#"{"allowed_extensions": []}"#,
            "policies[2].upload.allowed_extensions",
            "at least one",
        ),
        (
            r#"{"allowed_extensions": ["mp3", "exe"]}"#,
            "policies[2].upload.allowed_extensions[1]",
            "no magic number",
        ),
        (
            r#"{"allowed_extensions": [".mp3"]}"#,
            "policies[2].upload.allowed_extensions[0]",
            "without the leading dot",
        ),
        (
            r#"{"allowed_extensions": ["mp3", "MP3"]}"#,
            "policies[2].upload.allowed_extensions[1]",
            "listed twice",
        ),
        (
            r#"{"allowed_extensions": ["mp3"], "max_file_bytes": 0}"#,
            "policies[2].upload.max_file_bytes",
            "between",
        ),
        (
            r#"{"allowed_extensions": ["mp3"], "max_file_bytes": 10737418241}"#,
            "policies[2].upload.max_file_bytes",
            "10 GiB",
        ),
        (
            r#"{"allowed_extensions": ["mp3"], "max_files": 0}"#,
            "policies[2].upload.max_files",
            "between",
        ),
        (
            r#"{"allowed_extensions": ["mp3"], "max_files": 20, "max_parts": 10}"#,
            "policies[2].upload.max_parts",
            "max_files",
        ),
        (
            r#"{"allowed_extensions": ["mp3"], "max_parts": 1001}"#,
            "policies[2].upload.max_parts",
            "at most",
        ),
        (
            r#"{"allowed_extensions": ["mp3"], "max_part_header_bytes": 100}"#,
            "policies[2].upload.max_part_header_bytes",
            "between",
        ),
    ];
    for (json, field, reason) in cases {
        let e = compile_upload(&raw_upload(json), "policies[2].upload").unwrap_err();
        assert_eq!(e.field, field, "{json}");
        assert!(e.reason.contains(reason), "{json}: {}", e.reason);
    }
    assert!(
        serde_json::from_str::<RawUpload>(r#"{"allowed_extensions": ["mp3"], "max_size": 1}"#)
            .is_err()
    );
    let p = compile_upload(
        &raw_upload(r#"{"allowed_extensions": ["wav", "mp3"]}"#),
        "u",
    )
    .unwrap();
    assert_eq!(p.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
    assert_eq!(p.allowed_list(), "mp3, wav");
}
