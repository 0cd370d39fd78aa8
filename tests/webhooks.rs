//! Webhooks through the real hub: signed POSTs when a video becomes ready
//! or fails, retried with backoff, kept across a crash, and never aimed at
//! the hub's own networks unless the operator allows it. The receiver
//! checks signatures as a customer's would (Standard Webhooks: HMAC-SHA256
//! over `id.timestamp.body`), independently of the hub's code.

mod support;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::hub::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: u64,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

/// A webhook endpoint that answers each POST with the next status of
/// `script` (the last one repeated) and records what it got.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Vec<u16>>>,
    /// Told after each POST is recorded.
    arrived: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/meshcast", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.to_vec()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (g, s, a) = (got.clone(), script.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (g, s, a) = (g.clone(), s.clone(), a.clone());
                tokio::spawn(async move {
                    let Some(mut r) = read_request(&mut sock).await else {
                        return;
                    };
                    let status = {
                        let mut s = s.lock().unwrap();
                        if s.len() > 1 {
                            s.remove(0)
                        } else {
                            s[0]
                        }
                    };
                    r.answered = status;
                    g.lock().unwrap().push(r);
                    a.notify_waiters();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        Receiver {
            url,
            got,
            script,
            arrived,
        }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what has arrived, woken by each POST.
    async fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let arrived = self.arrived.notified();
            let got = self.got();
            if done(&got) {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{what}: got {got:?}");
            }
        }
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    assert!(head.starts_with("POST /hooks/meshcast "), "{head}");
    assert_eq!(header("content-type"), "application/json");
    let len: usize = header("content-length").parse().ok()?;
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().ok()?,
        signature: header("webhook-signature"),
        body: buf[head_end..head_end + len].to_vec(),
        answered: 0,
    })
}

/// What a receiver checks before it believes a delivery.
fn check_signature(secret: &str, r: &Received) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert!(
        r.signature.split(' ').any(|s| s == expected),
        "bad signature on {r:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(r.timestamp) < 300,
        "timestamp {} is not now",
        r.timestamp
    );
    // The hub's own helper for Rust receivers agrees.
    let verified = meshcast_hub::webhooks::core::verify(
        secret,
        &r.id,
        r.timestamp,
        &r.body,
        &r.signature,
        now,
    );
    assert_eq!(verified, Ok(()));
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

async fn add_hook(hub: &Hub, url: &str) -> (String, String) {
    let reply = hub
        .client()
        .post(hub.url("/v1/account/webhooks"))
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let made: Value = reply.json().await.unwrap();
    let hook = &made["webhook"];
    (
        hook["id"].as_str().unwrap().into(),
        hook["secret"].as_str().unwrap().into(),
    )
}

/// Not a video: the hub fails it at once (ffprobe refuses it).
async fn upload_junk(hub: &Hub) -> String {
    let junk = hub.dir.join("notes.txt");
    std::fs::write(&junk, b"meeting notes: not a video\n").unwrap();
    hub.upload(&junk).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_failed_videos_are_posted_signed_and_retried() {
    // The first POST fails, as a receiver mid-deploy would.
    let receiver = Receiver::start(&[503, 200]).await;
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.hub_setting("webhook_private_targets = true\nwebhook_retry = \"200ms\"");
    hub.launch().await;
    let (_, secret) = add_hook(&hub, &receiver.url).await;
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 2, "320x240");
    let ready = hub.publish(&src).await;
    let failed = upload_junk(&hub).await;
    let (v, _) = hub.wait_done(&failed, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "failed");

    let got = receiver
        .wait(
            "a ready (after a retry) and a failed event delivered",
            |got| {
                let ok = |video: &str| {
                    got.iter()
                        .any(|r| r.answered == 200 && body(r)["data"]["id"] == video)
                };
                ok(&ready) && ok(&failed)
            },
        )
        .await;
    for r in &got {
        check_signature(&secret, r);
    }
    let of = |video: &str| -> Vec<&Received> {
        got.iter()
            .filter(|r| body(r)["data"]["id"] == video)
            .collect()
    };
    let (ready_posts, failed_posts) = (of(&ready), of(&failed));
    // Whichever event went first met the 503 and was retried with the same
    // id and body; the other went through at once.
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].answered, 503);
    let retried = if ready_posts.len() == 2 {
        &ready_posts
    } else {
        &failed_posts
    };
    assert_eq!(retried.len(), 2, "{got:?}");
    assert_eq!(retried[0].id, retried[1].id);
    assert_eq!(retried[0].body, retried[1].body);
    assert_ne!(ready_posts[0].id, failed_posts[0].id);

    let r = body(ready_posts[0]);
    assert_eq!(r["type"], "video.ready");
    assert_eq!(r["data"]["status"], "ready");
    assert!(r["data"]["hls"][0]
        .as_str()
        .unwrap()
        .ends_with(&format!("/v/{ready}/master.m3u8")));
    assert!(r["timestamp"].as_str().unwrap().ends_with('Z'), "{r}");
    let f = body(failed_posts[0]);
    assert_eq!(f["type"], "video.failed");
    assert!(
        f["data"]["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{f}"
    );

    // Nothing is owed any more (the HUB records a delivery after the
    // receiver has answered, so after the receiver saw it), and the
    // metrics say what happened.
    support::eventually("no delivery pending", Duration::from_secs(30), || async {
        let hooks = get_json(&hub.client(), &hub.url("/v1/account/webhooks")).await;
        if hooks["webhooks"][0]["pending"] == json!([]) {
            Ok(())
        } else {
            Err(hooks.to_string())
        }
    })
    .await;
    let metrics = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("meshcast_hub_webhook_attempts_total{outcome=\"delivered\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshcast_hub_webhook_attempts_total{outcome=\"retry\"} 1"),
        "{metrics}"
    );
    hub.kill();
}

/// What is owed survives a crash: the hub is killed while the receiver is
/// down, and delivers the same event (same id) once both are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_owed_survives_a_hub_crash() {
    let receiver = Receiver::start(&[500]).await;
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.hub_setting(
        "webhook_private_targets = true\nwebhook_retry = \"300ms\"\nwebhook_attempts = 100",
    );
    hub.launch().await;
    let (_, secret) = add_hook(&hub, &receiver.url).await;
    let video = upload_junk(&hub).await;
    let first = receiver
        .wait("a first, refused attempt", |g| !g.is_empty())
        .await[0]
        .clone();
    hub.kill();
    *receiver.script.lock().unwrap() = vec![200];
    hub.launch().await;
    let got = receiver
        .wait("the owed event delivered after the restart", |g| {
            g.iter().any(|r| r.answered == 200)
        })
        .await;
    let delivered = got.iter().find(|r| r.answered == 200).unwrap();
    check_signature(&secret, delivered);
    assert_eq!(delivered.id, first.id);
    assert_eq!(delivered.body, first.body);
    assert_eq!(body(delivered)["data"]["id"], video.as_str());
    assert!(
        got.iter().all(|r| r.id == first.id),
        "one event only: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_cannot_reach_private_networks_and_are_the_accounts_own() {
    let receiver = Receiver::start(&[200]).await;
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.hub_setting("webhook_retry = \"100ms\"\nwebhook_attempts = 2");
    hub.launch().await;
    let client = hub.client();
    for bad in [
        "ftp://example.com/x",
        "not a url",
        "http://user:pw@example.com/",
    ] {
        let r = client
            .post(hub.url("/v1/account/webhooks"))
            .json(&json!({ "url": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().await.unwrap().contains("error"));
    }
    let (hook, _) = add_hook(&hub, &receiver.url).await;
    let video = upload_junk(&hub).await;
    // A loopback target: each attempt is refused before any connection,
    // and after its two attempts the delivery is listed as given up.
    let failed = support::eventually("the delivery given up", Duration::from_secs(30), || async {
        let hooks = get_json(&client, &hub.url("/v1/account/webhooks")).await;
        let failed = hooks["webhooks"][0]["failed"].clone();
        match failed.as_array() {
            Some(f) if !f.is_empty() => Ok(failed),
            _ => Err(format!("not given up: {hooks}")),
        }
    })
    .await;
    assert_eq!(failed[0]["video"], video.as_str());
    assert_eq!(failed[0]["attempts"], 2);
    assert!(
        failed[0]["last"].as_str().unwrap().contains("private"),
        "{failed}"
    );
    assert!(receiver.got().is_empty(), "the hub reached a loopback hook");

    // Another account sees none of it and cannot remove it.
    let other = client_with_key(&hub.create_account("other").await);
    let theirs = get_json(&other, &hub.url("/v1/account/webhooks")).await;
    assert_eq!(theirs["webhooks"], json!([]));
    let url = hub.url(&format!("/v1/account/webhooks/{hook}"));
    assert_eq!(other.delete(&url).send().await.unwrap().status(), 404);
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);
    let mine = get_json(&client, &hub.url("/v1/account/webhooks")).await;
    assert_eq!(mine["webhooks"], json!([]));
    // At most ten hooks an account.
    for _ in 0..10 {
        add_hook(&hub, "https://example.com/hook").await;
    }
    let r = client
        .post(hub.url("/v1/account/webhooks"))
        .json(&json!({ "url": "https://example.com/hook" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}
