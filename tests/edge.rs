//! End-to-end tests of `meshcast edge`: a real origin, the real binary.

mod support;

use futures::future::join_all;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_is_a_hit_with_cache_status_and_age() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let first = get(&edge.url("/seg/a.m4s?len=5000"), &[]).await;
    assert_eq!(first.status, 200);
    assert!(
        first.cache.starts_with("meshcast; fwd=miss"),
        "{}",
        first.cache
    );
    assert!(first.cache.contains("stored"), "{}", first.cache);
    let second = get(&edge.url("/seg/a.m4s?len=5000"), &[]).await;
    assert!(
        second.cache.starts_with("meshcast; hit"),
        "{}",
        second.cache
    );
    assert!(second.headers.contains_key("age"));
    assert_eq!(second.body, body_for("a.m4s", 5000));
    assert_eq!(origin.hits("/seg/a.m4s"), 1);
    // h2c reaches the same pipeline and the same cache.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(edge.url("/seg/a.m4s?len=5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(r.bytes().await.unwrap().to_vec(), body_for("a.m4s", 5000));
    assert_eq!(origin.hits("/seg/a.m4s"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended_not_replaced() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    get(&edge.url("/nostore/plain"), &[]).await;
    get(
        &edge.url("/nostore/chained"),
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    let seen = origin.state.lock().unwrap().forwarded_for.clone();
    assert_eq!(seen["/nostore/plain"], "127.0.0.1");
    // The origin sees the whole chain and believes it only as far as it
    // trusts each hop (the hub reads it from the right).
    assert_eq!(seen["/nostore/chained"], "198.51.100.7, 127.0.0.1");
}

/// Observability (issue 19): every origin request carries a request id
/// (the client's when well formed, else a fresh one) that the access log
/// names too; latencies are histograms by site; origin failures are
/// counted by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_the_origin_and_latencies_are_histograms() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    get(
        &edge.url("/nostore/given"),
        &[("x-request-id", "req-42.a_b")],
    )
    .await;
    get(&edge.url("/nostore/made"), &[]).await;
    get(&edge.url("/nostore/evil"), &[("x-request-id", "a b;c")]).await;
    let seen = origin.state.lock().unwrap().request_id.clone();
    assert_eq!(seen["/nostore/given"], "req-42.a_b");
    for path in ["/nostore/made", "/nostore/evil"] {
        assert_eq!(seen[path].len(), 16, "{path}: {}", seen[path]);
        assert!(seen[path].bytes().all(|b| b.is_ascii_hexdigit()));
    }
    assert_ne!(seen["/nostore/made"], seen["/nostore/evil"]);
    let line = eventually(
        "the access log names the request id",
        Duration::from_secs(10),
        || async {
            let log = std::fs::read_to_string(edge.path().join("access.log")).unwrap_or_default();
            log.lines()
                .find(|l| l.contains("/nostore/given"))
                .map(str::to_string)
                .ok_or_else(|| "no line yet".to_string())
        },
    )
    .await;
    assert!(line.ends_with(" id=req-42.a_b"), "{line}");

    let m = edge.metrics().await;
    let total = |name: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("site=\"*\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for name in [
        "meshcast_request_duration_seconds_count",
        "meshcast_time_to_first_byte_seconds_count",
        "meshcast_origin_duration_seconds_count",
    ] {
        assert_eq!(total(name), 3.0, "{name}:\n{m}");
    }

    // An origin that refuses connections: counted by kind.
    let dead = Edge::config(format!("127.0.0.1:{}", free_port()).parse().unwrap(), "")
        .start()
        .await;
    assert_eq!(get(&dead.url("/seg/x.m4s"), &[]).await.status, 502);
    let m = dead.metrics().await;
    assert!(
        m.contains("meshcast_upstream_errors_total{kind=\"ConnectRefused\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_origin_request_and_stream() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let url = edge.url("/slow/big.m4s?len=2000000");
    let expected = body_for("big.m4s", 2_000_000);

    // A waiter receives the first half while the origin still holds the rest.
    let mut first = reqwest::get(&url).await.unwrap();
    let waiter_url = url.clone();
    let waiter = tokio::spawn(async move {
        let mut resp = reqwest::get(&waiter_url).await.unwrap();
        let mut got = 0usize;
        while got < 1_000_000 {
            got += resp
                .chunk()
                .await
                .unwrap()
                .expect("bytes before the origin finished")
                .len();
        }
        (resp, got)
    });
    let (mut waiter_resp, mut waiter_got) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(waiter_got >= 1_000_000);
    // 200 more, each counted once its response head is in: the origin
    // holds the second half until every one of them has it, so none can
    // be a plain hit on a finished object — they all joined the one fill.
    let (head_in, mut heads) = tokio::sync::mpsc::unbounded_channel();
    let many: Vec<_> = (0..200)
        .map(|_| {
            let (url, head_in) = (url.clone(), head_in.clone());
            tokio::spawn(async move {
                let r = reqwest::get(url).await;
                let _ = head_in.send(());
                r
            })
        })
        .collect();
    for got in 0..200 {
        tokio::time::timeout(Duration::from_secs(30), heads.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {got} of 200 waiters got a response head while the origin held the body"
                )
            });
    }
    assert_eq!(origin.hits("/slow/big.m4s"), 1, "still one origin request");
    origin.release.notify_waiters();
    while let Some(c) = waiter_resp.chunk().await.unwrap() {
        waiter_got += c.len();
    }
    assert_eq!(waiter_got, expected.len());
    let mut first_body = Vec::new();
    while let Some(c) = first.chunk().await.unwrap() {
        first_body.extend_from_slice(&c);
    }
    assert_eq!(first_body, expected);
    let bodies = join_all(
        many.into_iter()
            .map(|h| async move { h.await.unwrap().unwrap().bytes().await.unwrap() }),
    )
    .await;
    assert_eq!(bodies.len(), 200);
    assert!(
        bodies.iter().all(|b| b[..] == expected[..]),
        "every body is the origin's"
    );
    assert_eq!(
        origin.hits("/slow/big.m4s"),
        1,
        "exactly one origin request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_come_from_the_cached_object() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let full = body_for("r.m4s", 100_000);
    // A range on a miss: the edge fills its cache with the whole object
    // (an origin that honours Range would otherwise hand it a part).
    let first = get(
        &edge.url("/seg/r.m4s?len=100000"),
        &[("range", "bytes=10-19")],
    )
    .await;
    assert_eq!(first.status, 206);
    assert_eq!(first.body, &full[10..20]);
    assert_eq!(origin.state.lock().unwrap().ranged.get("/seg/r.m4s"), None);
    let whole = get(&edge.url("/seg/r.m4s?len=100000"), &[]).await;
    assert_eq!(whole.body, full, "{}", whole.cache);
    let r = get(
        &edge.url("/seg/r.m4s?len=100000"),
        &[("range", "bytes=1000-1999")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 1000-1999/100000");
    assert_eq!(r.body, &full[1000..2000]);
    let tail = get(
        &edge.url("/seg/r.m4s?len=100000"),
        &[("range", "bytes=-10")],
    )
    .await;
    assert_eq!(tail.body, &full[99_990..]);
    let bad = get(
        &edge.url("/seg/r.m4s?len=100000"),
        &[("range", "bytes=200000-")],
    )
    .await;
    assert_eq!(bad.status, 416);
    // RFC 9110 §14.1.2: a suffix of length 0 selects nothing: 416.
    let empty = get(&edge.url("/seg/r.m4s?len=100000"), &[("range", "bytes=-0")]).await;
    assert_eq!(empty.status, 416);
    assert_eq!(empty.headers["content-range"], "bytes */100000");
    assert!(empty.body.is_empty());
    assert_eq!(origin.hits("/seg/r.m4s"), 1);
    // HEAD from cache: headers, no body.
    let head = reqwest::Client::new()
        .head(edge.url("/seg/r.m4s?len=100000"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "100000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_cache_and_corrupt_files_are_never_served() {
    let origin = Origin::start().await;
    let mut edge = Edge::config(origin.addr, "").start().await;
    let a = body_for("keep.m4s", 300_000);
    get(&edge.url("/seg/keep.m4s?len=300000"), &[]).await;
    get(&edge.url("/seg/bad.m4s?len=300000"), &[]).await;
    edge.wait_disk_objects(2.0).await;
    edge.kill();
    edge.launch().await;
    let r = get(&edge.url("/seg/keep.m4s?len=300000"), &[]).await;
    assert!(r.cache.contains("hit"), "{}", r.cache);
    assert_eq!(r.body, a);
    assert_eq!(
        origin.hits("/seg/keep.m4s"),
        1,
        "served from disk after restart"
    );
    let tier = |t: &str| format!("meshcast_cache_hits_total{{tier=\"{t}\"}}");
    assert_eq!(edge.metric(&tier("disk")).await, 1.0);
    assert_eq!(edge.metric(&tier("memory")).await, 0.0);
    // On plaintext HTTP/1 a body this large went from its file by
    // sendfile (a write after a full socket may be an ordinary copy) and
    // was not promoted; once checked it stays locked in RAM: the next hit,
    // a range, is served from that locked body with nothing read, sent the
    // same way, and holds the right bytes.
    let sent = edge.metric("meshcast_sendfile_bytes_total").await;
    assert!(sent > 0.0 && sent <= 300_000.0, "sent by sendfile: {sent}");
    let r = get(
        &edge.url("/seg/keep.m4s?len=300000"),
        &[("range", "bytes=1000-250999")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, a[1000..251_000]);
    assert_eq!(edge.metric(&tier("disk")).await, 1.0);
    assert_eq!(edge.metric(&tier("locked")).await, 1.0);
    assert_eq!(edge.metric(&tier("memory")).await, 0.0);
    let locked = edge.metric("meshcast_cache_bytes{tier=\"locked\"}").await;
    assert_eq!(locked, 300_000.0, "the checked body is locked");
    assert!(edge.metric("meshcast_sendfile_bytes_total").await > sent);
    // A smaller body is promoted by its disk hit: the next comes from memory.
    get(&edge.url("/seg/small.m4s?len=50000"), &[]).await;
    edge.wait_disk_objects(3.0).await;
    edge.kill();
    edge.launch().await;
    get(&edge.url("/seg/small.m4s?len=50000"), &[]).await;
    let small = get(&edge.url("/seg/small.m4s?len=50000"), &[]).await;
    assert_eq!(small.body, body_for("small.m4s", 50_000));
    assert_eq!(edge.metric(&tier("disk")).await, 1.0);
    assert_eq!(edge.metric(&tier("memory")).await, 1.0);

    // Flip one byte in every body file on disk, then restart with an empty
    // memory tier: the damaged object must be refetched, never served.
    edge.kill();
    for f in edge.body_files() {
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[1234] ^= 0xff;
        std::fs::write(&f, bytes).unwrap();
    }
    edge.launch().await;
    let r = get(&edge.url("/seg/bad.m4s?len=300000"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body_for("bad.m4s", 300_000));
    assert_eq!(origin.hits("/seg/bad.m4s"), 2, "corrupt copy refetched");
    assert!(edge.metric("meshcast_cache_corrupt_objects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_while_the_origin_is_down_then_502() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let fresh = get(&edge.url("/sie/s.m4s"), &[]).await;
    assert_eq!(fresh.status, 200);
    origin.stop();
    // Fresh for 1 s: hits until then, stale once it expires.
    let stale = until_cache_says(&edge.url("/sie/s.m4s"), "stale").await;
    assert_eq!(stale.status, 200);
    assert!(stale.cache.contains("stale"), "{}", stale.cache);
    assert_eq!(stale.body, fresh.body);
    let none = get(&edge.url("/seg/never-cached.m4s"), &[]).await;
    assert_eq!(none.status, 502);
    assert!(String::from_utf8_lossy(&none.body).contains("origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_uses_304_and_clients_get_304() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let first = get(&edge.url("/etag/p.m3u8"), &[]).await;
    let etag = first.headers["etag"].to_str().unwrap().to_string();
    let again = until_cache_says(&edge.url("/etag/p.m3u8"), "revalidated").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(
        origin.conditional("/etag/p.m3u8"),
        1,
        "the edge revalidated with If-None-Match"
    );
    assert!(again.cache.contains("revalidated"), "{}", again.cache);
    // RFC 9111 §4.3.4: every field of the 304 replaces the stored one (not
    // only a fixed list), including ones the 200 did not have.
    assert_eq!(again.headers["x-version"], "2");
    assert_eq!(again.headers["x-revalidated"], "yes");
    assert_eq!(
        again.headers["content-length"],
        first.body.len().to_string().as_str()
    );
    let cond = get(&edge.url("/etag/p.m3u8"), &[("if-none-match", &etag)]).await;
    assert_eq!(cond.status, 304);
    assert!(cond.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_is_not_stored() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    for _ in 0..2 {
        let r = get(&edge.url("/nostore/x.m4s"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            !r.cache.contains("stored") && !r.cache.contains("hit"),
            "{}",
            r.cache
        );
    }
    assert_eq!(origin.hits("/nostore/x.m4s"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_refuse_tampering_and_expiry() {
    let origin = Origin::start().await;
    let extra = format!("[site.signed_urls]\nsecret = \"{URL_SECRET}\"\n");
    let edge = Edge::config(origin.addr, &extra).start().await;
    let signer = meshcast_edge::access::SignedUrls::new(URL_SECRET);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let q = signer.sign("/seg/", now + 600);
    let ok = get(&edge.url(&format!("/seg/t.m4s?{q}")), &[]).await;
    assert_eq!(ok.status, 200);
    let tampered = get(
        &edge.url(&format!("/seg/t.m4s?{}", q.replace("sig=", "sig=0"))),
        &[],
    )
    .await;
    assert_eq!(tampered.status, 403);
    let forged = q.replace(
        &format!("exp={}", now + 600),
        &format!("exp={}", now + 6000),
    );
    let r = get(&edge.url(&format!("/seg/t.m4s?{forged}")), &[]).await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("signature does not match"));
    let expired = signer.sign("/seg/", now - 1);
    let r = get(&edge.url(&format!("/seg/t.m4s?{expired}")), &[]).await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    assert_eq!(get(&edge.url("/seg/t.m4s"), &[]).await.status, 403);
    // Signature parameters are not part of the cache key.
    let q2 = signer.sign("/seg/t.m4s", now + 900);
    let hit = get(&edge.url(&format!("/seg/t.m4s?{q2}")), &[]).await;
    assert!(hit.cache.contains("hit"), "{}", hit.cache);
    assert_eq!(origin.hits("/seg/t.m4s"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_changes_a_ttl_and_refuses_a_bad_config() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "playlist_ttl = \"0s\"")
        .start()
        .await;
    get(&edge.url("/pl/live.m3u8"), &[]).await;
    get(&edge.url("/pl/live.m3u8"), &[]).await;
    assert_eq!(
        origin.hits("/pl/live.m3u8"),
        2,
        "TTL 0: playlists not cached"
    );
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    edge.write_config(origin.addr, "playlist_ttl = \"1h\"");
    assert!(hup(edge.pid()).success());
    let mut reloaded = false;
    for _ in 0..100 {
        if edge
            .metric("meshcast_config_reloads_total{result=\"ok\"}")
            .await
            >= 1.0
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded);
    get(&edge.url("/pl/live.m3u8"), &[]).await;
    let r = get(&edge.url("/pl/live.m3u8"), &[]).await;
    assert!(r.cache.contains("hit"), "{}", r.cache);
    assert_eq!(origin.hits("/pl/live.m3u8"), 3);

    std::fs::write(&edge.config, "[edge]\nlisten = nonsense\n").unwrap();
    assert!(hup(edge.pid()).success());
    for _ in 0..100 {
        if edge
            .metric("meshcast_config_reloads_total{result=\"refused\"}")
            .await
            >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        edge.metric("meshcast_config_reloads_total{result=\"refused\"}")
            .await,
        1.0
    );
    assert_eq!(
        get(&edge.url("/pl/live.m3u8"), &[]).await.status,
        200,
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    // Replace the catch-all site with a named one to see 421.
    let text = std::fs::read_to_string(&edge.config)
        .unwrap()
        .replace("hosts = [\"*\"]", "hosts = [\"cdn.example.com\"]");
    std::fs::write(&edge.config, text).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &edge.pid().to_string()])
        .status()
        .unwrap();
    // The reload is done when the old catch-all site is gone.
    let r = eventually(
        "the edge to reload its sites",
        Duration::from_secs(10),
        || async {
            let r = get(&edge.url("/seg/a.m4s"), &[("host", "unknown.example.org")]).await;
            if r.status == 421 {
                Ok(r)
            } else {
                Err(format!("status {}", r.status))
            }
        },
    )
    .await;
    assert!(String::from_utf8_lossy(&r.body).contains("unknown.example.org"));
    let ok = get(&edge.url("/seg/a.m4s"), &[("host", "cdn.example.com")]).await;
    assert_eq!(ok.status, 200);
    let big = "x".repeat(40_000);
    let r = get(
        &edge.url("/seg/a.m4s"),
        &[("host", "cdn.example.com"), ("x-big", &big)],
    )
    .await;
    assert_eq!(r.status, 431);
    // Raw garbage on the wire: 400, and the edge keeps serving.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", edge.port))
        .await
        .unwrap();
    s.write_all(b"GARBAGE \x01\x02 nonsense\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.is_empty() || String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        get(&edge.url("/seg/a.m4s"), &[("host", "cdn.example.com")])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_metrics_and_cmcd_access_log() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let cmcd = "/seg/p1.m4s?CMCD=br%3D3200%2Cbl%3D2100%2Cot%3Dv%2Csid%3D%22session-42%22";
    get(&edge.url(cmcd), &[]).await;
    get(&edge.url("/seg/p2.m4s"), &[]).await;
    let client = reqwest::Client::new();
    let purge = |q: String| client.post(format!("http://127.0.0.1:{}/purge?{q}", edge.admin));
    assert_eq!(
        purge("prefix=/seg/".into()).send().await.unwrap().status(),
        401
    );
    let r = purge("prefix=/seg/".into())
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"purged\":2"));
    let again = get(&edge.url("/seg/p2.m4s"), &[]).await;
    assert!(again.cache.contains("fwd=miss"), "{}", again.cache);
    assert_eq!(origin.hits("/seg/p2.m4s"), 2);

    let m = edge.metrics().await;
    for name in [
        "meshcast_requests_total{cache=\"miss\",status=\"200\"}",
        "meshcast_response_bytes_total",
        "meshcast_origin_fetches_total 3",
        "meshcast_cache_bytes{tier=\"memory\"}",
        "meshcast_cache_objects{tier=\"disk\"}",
        "meshcast_uring_submissions_total",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(edge.path().join("access.log")).unwrap_or_default();
        if log.contains("p2.m4s") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = log
        .lines()
        .find(|l| l.contains("p1.m4s"))
        .expect("access log line");
    for want in [
        "cmcd.sid=\"session-42\"",
        "cmcd.br=\"3200\"",
        "cmcd.bl=\"2100\"",
        "cmcd.ot=\"v\"",
        " 200 miss ",
    ] {
        assert!(line.contains(want), "{want} missing from: {line}");
    }
}

#[test]
fn check_flag_names_the_broken_line() {
    let dir = std::env::temp_dir().join(format!("meshcast-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        "[edge]\nlisten = [\"127.0.0.1:8080\"]\n[cache]\ndir = \"/tmp/x\"\ndisk_size = \"ten gigs\"\n[[site]]\nhosts = [\"*\"]\norigin = \"http://127.0.0.1:8000\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["edge", "--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml:5:"), "{err}");
    assert!(err.contains("cache.disk_size"), "{err}");
    std::fs::write(&path, "[edge]\nlisten = [\"127.0.0.1:8080\"]\n[cache]\ndir = \"/tmp/x\"\ndisk_size = \"1GiB\"\n[[site]]\nhosts = [\"*\"]\norigin = \"http://127.0.0.1:8000\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["edge", "--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_background() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    get(&edge.url("/swr/w.m4s"), &[]).await;
    let stale = until_cache_says(&edge.url("/swr/w.m4s"), "stale").await;
    assert_eq!(stale.status, 200);
    assert!(
        stale.cache.contains("stale-while-revalidate"),
        "{}",
        stale.cache
    );
    for _ in 0..100 {
        if origin.hits("/swr/w.m4s") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.hits("/swr/w.m4s"), 2, "one background refresh");
    let fresh = get(&edge.url("/swr/w.m4s"), &[]).await;
    assert!(
        fresh.cache.contains("hit") && !fresh.cache.contains("stale"),
        "{}",
        fresh.cache
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_variant_per_header_value() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let en = get(&edge.url("/vary/v.m4s"), &[("accept-language", "en")]).await;
    let fr = get(&edge.url("/vary/v.m4s"), &[("accept-language", "fr")]).await;
    assert_eq!(en.body, b"lang=en");
    assert_eq!(fr.body, b"lang=fr");
    let en2 = get(&edge.url("/vary/v.m4s"), &[("accept-language", "en")]).await;
    let fr2 = get(&edge.url("/vary/v.m4s"), &[("accept-language", "fr")]).await;
    assert_eq!(en2.body, b"lang=en");
    assert_eq!(fr2.body, b"lang=fr");
    assert!(
        en2.cache.contains("hit") && fr2.cache.contains("hit"),
        "{} / {}",
        en2.cache,
        fr2.cache
    );
    assert_eq!(origin.hits("/vary/v.m4s"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_http2_by_alpn() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "");
    let (cert, key) = (edge.path().join("cert.pem"), edge.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = free_port();
    let text = std::fs::read_to_string(&edge.config).unwrap().replace(
        "[edge]\n",
        &format!("[edge]\nlisten_tls = [\"127.0.0.1:{tls_port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display()),
    );
    std::fs::write(&edge.config, text).unwrap();
    let edge = edge.start().await;
    get(&edge.url("/seg/tls.m4s"), &[]).await;
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %{size_download}",
        ])
        .arg(format!("https://127.0.0.1:{tls_port}/seg/tls.m4s"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200 1000");
    assert_eq!(
        origin.hits("/seg/tls.m4s"),
        1,
        "TLS and plain share the cache"
    );
}

/// A signed URL for /v/A/ never reaches /v/B/, however the path is
/// spelled, in front of an origin (nginx) that normalises paths the way
/// common web servers do: dot segments and escaped dots are resolved
/// before the prefix check, encoded separators are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_path_escapes_a_signed_prefix() {
    let dir = std::env::temp_dir().join(format!("meshcast-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, body) in [
        ("www/v/A/ok.m4s", "A's segment"),
        ("www/v/B/secret.m4s", "B's secret"),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let nginx = Nginx::serve(&dir.join("www"), &dir).await;
    // The origin itself resolves every one of these spellings to B's file.
    let (code, body) = raw_get(nginx.addr.port(), "/v/A/%2e%2e/B/secret.m4s").await;
    assert_eq!(
        (code, body.as_str()),
        (200, "B's secret"),
        "nginx normalises"
    );
    let extra = format!("[site.signed_urls]\nsecret = \"{URL_SECRET}\"\n");
    let edge = Edge::config(nginx.addr, &extra).start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let q = meshcast_edge::access::SignedUrls::new(URL_SECRET).sign("/v/A/", now + 600);
    let (code, body) = raw_get(edge.port, &format!("/v/A/ok.m4s?{q}")).await;
    assert_eq!((code, body.as_str()), (200, "A's segment"));
    for escape in [
        "/v/A/../B/secret.m4s",
        "/v/A/%2e%2e/B/secret.m4s",
        "/v/A/.%2E/B/secret.m4s",
        "/v/A/%2E./B/secret.m4s",
        "/v/A/./../B/secret.m4s",
    ] {
        let (code, body) = raw_get(edge.port, &format!("{escape}?{q}")).await;
        assert_eq!(code, 403, "{escape}: {body}");
        assert!(!body.contains("B's secret"), "{escape}");
    }
    for refused in [
        "/v/A/..%2fB/secret.m4s",
        "/v/A/..%2FB/secret.m4s",
        "/v/A/..%5cB/secret.m4s",
        "/v/A/%00",
        "/../v/A/ok.m4s",
    ] {
        let (code, body) = raw_get(edge.port, &format!("{refused}?{q}")).await;
        assert_eq!(code, 400, "{refused}: {body}");
        assert!(!body.contains("B's secret"), "{refused}");
    }
    // A normal form the prefix covers is served, from the normal form.
    let (code, body) = raw_get(edge.port, &format!("/v/A/%6fk.m4s?{q}")).await;
    assert_eq!((code, body.as_str()), (200, "A's segment"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 9110 §7.6.1, RFC 9213, RFC 9111 §5.2.1.7, and the edge's own
/// `Server`, each on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_targeted_cache_control_only_if_cached_and_server() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    // §7.6.1: what Connection names, and Keep-Alive, are neither forwarded
    // nor stored; other fields are.
    for expect in ["miss", "hit"] {
        let r = get(&edge.url("/hop/h.m4s"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.cache.contains(expect), "{expect}: {}", r.cache);
        assert!(
            !r.headers.contains_key("x-hop"),
            "{expect}: {:?}",
            r.headers
        );
        assert!(!r.headers.contains_key("keep-alive"), "{expect}");
        assert_eq!(r.headers["x-end"], "kept");
    }
    // RFC 9213: CDN-Cache-Control wins over Cache-Control for the edge
    // (stored for 60 s though the client is told no-store), and is not
    // forwarded; Meshcast-Cache-Control wins over both.
    for expect in ["miss", "hit"] {
        let r = get(&edge.url("/cdncc/c.m4s"), &[]).await;
        assert!(r.cache.contains(expect), "{expect}: {}", r.cache);
        assert_eq!(r.headers["cache-control"], "no-store");
        assert!(!r.headers.contains_key("cdn-cache-control"));
    }
    assert_eq!(origin.hits("/cdncc/c.m4s"), 1);
    for _ in 0..2 {
        let r = get(&edge.url("/mcc/m.m4s"), &[]).await;
        assert!(r.cache.contains("fwd=bypass"), "not stored: {}", r.cache);
        assert_eq!(r.headers["cache-control"], "max-age=60");
        assert!(!r.headers.contains_key("meshcast-cache-control"));
    }
    assert_eq!(origin.hits("/mcc/m.m4s"), 2);
    // §5.2.1.7: only-if-cached answers from the cache or with a 504, and
    // never asks the origin.
    let cached = get(
        &edge.url("/hop/h.m4s"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(cached.status, 200);
    let missing = get(
        &edge.url("/seg/never.m4s"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(missing.status, 504);
    assert_eq!(origin.hits("/seg/never.m4s"), 0);
    // The edge's own responses say who answered.
    assert_eq!(missing.headers["server"], "meshcast");
}

/// RFC 9111 §4.4: a successful unsafe request invalidates what is stored
/// for its target, and for the same-host Location its answer names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate_stored_responses() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    for path in ["/seg/inv.m4s", "/seg/target.m4s"] {
        get(&edge.url(path), &[]).await;
        assert!(get(&edge.url(path), &[]).await.cache.contains("hit"));
    }
    let client = reqwest::Client::new();
    // DELETE of the segment itself (the test origin answers 200).
    let r = client
        .delete(edge.url("/seg/inv.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(get(&edge.url("/seg/inv.m4s"), &[])
        .await
        .cache
        .contains("miss"));
    assert_eq!(
        origin.hits("/seg/inv.m4s"),
        3,
        "fetched again after the DELETE"
    );
    // A POST elsewhere whose 201 names /seg/target.m4s in Location.
    let r = client
        .post(edge.url("/post/target.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(get(&edge.url("/seg/target.m4s"), &[])
        .await
        .cache
        .contains("miss"));
}

/// RFC 9111 §5.2.1: what a request's own Cache-Control asks of the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_directives_are_obeyed() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "").start().await;
    let url = edge.url("/etag/rq.m3u8"); // max-age=1 with an ETag
    get(&url, &[]).await;
    assert!(get(&url, &[]).await.cache.contains("hit"));
    // §5.2.1.4 no-cache, §5.2.1.3 min-fresh beyond what is left: each
    // revalidates with the origin first. (§5.2.1.1 max-age is unit-tested:
    // a just-revalidated response is 0 s old, which max-age=0 accepts.)
    for (n, cc) in ["no-cache", "min-fresh=30"].iter().enumerate() {
        let r = get(&url, &[("cache-control", cc)]).await;
        assert_eq!(r.status, 200);
        assert!(r.cache.contains("revalidated"), "{cc}: {}", r.cache);
        assert_eq!(origin.conditional("/etag/rq.m3u8"), n + 1, "{cc}");
    }
    // §5.2.1.2 max-stale: once stale, served as it is, without the origin.
    tokio::time::sleep(Duration::from_millis(2100)).await; // max-age=1 runs out
    let stale = get(&url, &[("cache-control", "max-stale=60")]).await;
    assert!(stale.cache.contains("hit"), "{}", stale.cache);
    assert_eq!(origin.conditional("/etag/rq.m3u8"), 2);
    // §5.2.1.5 no-store: nothing of this answer is stored.
    let seg = edge.url("/seg/ns.m4s");
    assert!(!get(&seg, &[("cache-control", "no-store")])
        .await
        .cache
        .contains("stored"));
    assert!(get(&seg, &[]).await.cache.contains("miss"));
    assert_eq!(origin.hits("/seg/ns.m4s"), 2);
}

/// A keep-alive connection left idle is closed after
/// `[edge] keepalive_timeout` (pingora alone keeps it forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_on_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "");
    let text = std::fs::read_to_string(&edge.config)
        .unwrap()
        .replace("[edge]\n", "[edge]\nkeepalive_timeout = \"1s\"\n");
    std::fs::write(&edge.config, text).unwrap();
    let edge = edge.start().await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", edge.port))
        .await
        .unwrap();
    s.write_all(b"GET /seg/k.m4s?len=10 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let body_len = |got: &[u8]| {
        got.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| got.len() - i - 4)
    };
    while body_len(&got).is_none_or(|n| n < 10) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Then silence: the edge hangs up within a couple of seconds.
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the edge closed the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF, not more bytes");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// GETs `url` until its cache status names `word` (the copy expired after
/// its 1 s max-age): hits until then, which change nothing.
async fn until_cache_says(url: &str, word: &str) -> Reply {
    eventually(
        &format!("the edge to answer {url} as {word}"),
        Duration::from_secs(10),
        || async {
            let r = get(url, &[]).await;
            if r.cache.contains(word) {
                Ok(r)
            } else {
                Err(format!("cache status {:?}", r.cache))
            }
        },
    )
    .await
}

/// A disk tier of 2 MiB keeps no more than 2 MiB: what its eviction
/// policy drops is deleted from disk and refetched when asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_keeps_no_more_than_its_size() {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "");
    let text = std::fs::read_to_string(&edge.config)
        .unwrap()
        .replace("disk_size = \"256MiB\"", "disk_size = \"2MiB\"")
        .replace(
            "memory_size = \"64MiB\"",
            "memory_size = \"1MiB\"\nmax_object_size = \"1MiB\"",
        );
    std::fs::write(&edge.config, text).unwrap();
    let edge = edge.start().await;
    let url = |i: usize| edge.url(&format!("/seg/o{i}.m4s?len=100000"));
    for i in 0..60 {
        assert_eq!(get(&url(i), &[]).await.status, 200);
    }
    for i in 0..60 {
        assert_eq!(
            get(&url(i), &[]).await.body,
            body_for(&format!("o{i}.m4s"), 100_000)
        );
    }
    let refetched = (0..60)
        .filter(|i| origin.hits(&format!("/seg/o{i}.m4s")) == 2)
        .count();
    assert!(
        refetched >= 30,
        "only {refetched} of 60 evicted objects refetched"
    );
    eventually(
        "evicted files to be deleted",
        Duration::from_secs(10),
        || async {
            let files = edge.body_files().len();
            let bytes = edge.metric("meshcast_cache_bytes{tier=\"disk\"}").await;
            if files <= 21 && bytes <= (2 << 20) as f64 {
                Ok(())
            } else {
                Err(format!("{files} files, {bytes} bytes"))
            }
        },
    )
    .await;
}
