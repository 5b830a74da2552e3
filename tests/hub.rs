//! `convert hf://owner/repo` against a local stand-in for the Hugging Face Hub (`HF_ENDPOINT`):
//! the repo listing API, `resolve/<rev>/<file>` with the Hub's headers (ETag, X-Repo-Commit,
//! Content-Range for ranged GETs, a relative redirect as the Hub gives for LFS files), files kept
//! in `HF_HOME` and reused on a second convert without a download; the converted pack is the
//! official model. Errors: an unknown repo, an address with no checkpoint.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;

/// A Hub serving one repo `test/dit` at commit `c0ffee`, from `files` (repo path -> bytes).
/// Returns the endpoint and the log of requested paths.
fn serve(files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut range: Option<(usize, Option<usize>)> = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse().unwrap(), b.parse().ok()));
                }
            }
            seen.lock().unwrap().push(path.clone());
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == "/api/models/test/dit/revision/main" {
                let list: Vec<String> = files.keys().map(|k| format!("{{\"rfilename\":\"{k}\"}}")).collect();
                let json = format!("{{\"sha\":\"c0ffee\",\"siblings\":[{}]}}", list.join(","));
                ("200 OK", vec!["Content-Type: application/json".into()], json.into_bytes())
            } else if let Some(f) = path.strip_prefix("/test/dit/resolve/main/") {
                // LFS files answer with a relative redirect, as the Hub does.
                ("302 Found", vec![format!("Location: /lfs/{f}"), "X-Repo-Commit: c0ffee".into(), format!("X-Linked-Etag: \"etag-{}\"", f.replace('/', "-"))], Vec::new())
            } else if let Some(bytes) = path.strip_prefix("/lfs/").and_then(|f| files.get(f)) {
                let (a, b) = range.map(|(a, b)| (a, b.unwrap_or(bytes.len() - 1).min(bytes.len() - 1))).unwrap_or((0, bytes.len() - 1));
                let hs = vec![
                    format!("Content-Range: bytes {a}-{b}/{}", bytes.len()),
                    "X-Repo-Commit: c0ffee".into(),
                    format!("ETag: \"etag-{}\"", path.replace('/', "-")),
                ];
                ("206 Partial Content", hs, bytes[a..=b].to_vec())
            } else {
                ("404 Not Found", vec!["X-Error-Code: RepoNotFound".into()], b"not found".to_vec())
            };
            let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (format!("http://{addr}"), log)
}

fn cli(args: &[&str], endpoint: &str, home: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sparsedit")).args(args).env("HF_ENDPOINT", endpoint).env("HF_HOME", home).output().unwrap()
}

#[test]
fn convert_from_a_hub_repo() {
    let snap = fixture_dir("dit_dense_diffusers");
    let mut files = HashMap::new();
    for f in ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.fp16.safetensors"] {
        files.insert(f.to_string(), std::fs::read(snap.join(f)).unwrap());
    }
    files.insert("vae/config.json".to_string(), b"{}".to_vec());
    let (endpoint, log) = serve(files);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf-home");
    let pack = dir.path().join("dit.gguf");
    let out = cli(&["convert", "hf://test/dit", "-o", pack.to_str().unwrap(), "--quant", "f32"], &endpoint, &home);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fetched: Vec<String> = log.lock().unwrap().iter().filter(|p| p.starts_with("/lfs/")).cloned().collect();
    assert!(fetched.iter().all(|p| p.starts_with("/lfs/transformer/")) && !fetched.iter().any(|p| p.contains("fp16")), "only the f32 transformer files: {fetched:?}");
    assert!(home.join("hub/models--test--dit/snapshots/c0ffee/transformer/diffusion_pytorch_model.safetensors").exists(), "kept in HF_HOME's cache");

    let info = cli(&["info", pack.to_str().unwrap()], &endpoint, &home);
    assert!(String::from_utf8_lossy(&info.stdout).contains("name: test/dit"), "the pack is named after the repo");
    // The pack is the official model: its forward equals the dit_dense fixture.
    let inputs = fixture_dir("dit_dense").join("inputs.safetensors");
    let fwd = dir.path().join("out.safetensors");
    let out = cli(&["forward", "--model", pack.to_str().unwrap(), "--inputs", inputs.to_str().unwrap(), "--out", fwd.to_str().unwrap(), "--backend", "cpu"], &endpoint, &home);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exp = load_st(&fixture_dir("dit_dense").join("expected.safetensors"));
    assert_close("hf:// pack forward", &f32s(&load_st(&fwd)["out"]), &f32s(&exp["out"]), 1e-4);

    // A second convert reuses the cached files: no file download, only the listing and the
    // metadata checks.
    let before = log.lock().unwrap().iter().filter(|p| p.starts_with("/lfs/")).count();
    let out = cli(&["convert", "hf://test/dit/transformer", "-o", dir.path().join("again.gguf").to_str().unwrap()], &endpoint, &home);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(log.lock().unwrap().iter().filter(|p| p.starts_with("/lfs/")).count(), before, "served from the cache");

    // Naming the fp16 file fetches it and its config.json.
    let out = cli(&["convert", "hf://test/dit/transformer/diffusion_pytorch_model.fp16.safetensors", "-o", dir.path().join("h.gguf").to_str().unwrap()], &endpoint, &home);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Clear one-line errors, nothing written.
    for (addr, want) in [("hf://test/missing", "hf://test/missing"), ("hf://test/dit/vae", "no checkpoint in vae"), ("hf://test/dit/nothing", "no file or folder nothing")] {
        let target = dir.path().join("bad.gguf");
        let out = cli(&["convert", addr, "-o", target.to_str().unwrap()], &endpoint, &home);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !target.exists(), "{addr}");
        let last = err.trim().lines().last().unwrap_or("");
        assert!(last.starts_with("error:") && last.contains(want), "{addr}: {err}");
    }
}
