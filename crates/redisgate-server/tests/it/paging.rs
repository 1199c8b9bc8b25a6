//! The paged listings end to end: `?limit=` and `?after=` on the instance and API-key lists,
//! the `Link: <…>; rel="next"` header, a walk that stays exact while rows come and go, bad
//! parameters, and cursors that cross organizations.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::api::{Api, control_plane};
use crate::common::{Gate, Redis};

/// One page: status, the `Link` header's next URL (relative) and the body.
async fn page(api: &Api<'_>, path: &str) -> (u16, Option<String>, Value) {
    let r = api.g.http.get(api.g.url(path)).bearer_auth(api.token.as_deref().unwrap()).send().await.unwrap();
    let status = r.status().as_u16();
    let links: Vec<_> = r.headers().get_all("link").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(links.len() <= 1, "{links:?}");
    let next = links.first().map(|l| {
        let url = l.strip_prefix('<').and_then(|l| l.strip_suffix(">; rel=\"next\"")).expect(l);
        assert!(url.starts_with(path.split('?').next().unwrap()), "a relative link to the same route: {l}");
        url.to_owned()
    });
    (status, next, r.json().await.unwrap())
}

fn ids(body: &Value) -> Vec<String> {
    body.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
}

/// Walks from `first`, calling `between(pages so far)` after each page that links a next one.
async fn walk(api: &Api<'_>, first: &str, mut between: impl AsyncFnMut(usize)) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut path = first.to_owned();
    loop {
        let (s, next, body) = page(api, &path).await;
        assert_eq!(s, 200, "{body}");
        pages.push(ids(&body));
        let Some(next) = next else { return pages };
        between(pages.len()).await;
        path = next;
    }
}

fn assert_validation(status: u16, body: &Value, field: &str) {
    assert_eq!(
        (status, body["code"].as_str(), body["field"].as_str()),
        (422, Some("validation_failed"), Some(field)),
        "{body}"
    );
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

/// An organization of `api`'s user, its quotas raised by `admin`; its id.
async fn new_org(admin: &Api<'_>, api: &Api<'_>) -> String {
    let (s, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
    assert_eq!(s, 201, "{org}");
    let id = org["id"].as_str().unwrap().to_owned();
    let quota = json!({"max_instances": 20, "max_memory_bytes": 1073741824, "max_api_keys": 100});
    assert_eq!(admin.put(&format!("/api/organizations/{id}/quota"), quota).await.0, 200);
    id
}

async fn new_key(api: &Api<'_>, org: &str, name: &str) -> String {
    let (s, k) = api
        .post(&format!("/api/organizations/{org}/api-keys"), json!({"name": name, "scope": "read-only"}))
        .await;
    assert_eq!(s, 201, "{k}");
    k["api_key"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_listed_a_page_at_a_time() {
    let g = control_plane().await;
    let (admin, _) = Api::signup(&g, "root@example.com").await;
    let (ann, _) = Api::signup(&g, "ann@example.com").await;
    let org = new_org(&admin, &ann).await;
    let keys = format!("/api/organizations/{org}/api-keys");
    let mut made = Vec::new();
    for i in 0..25 {
        made.push(new_key(&ann, &org, &format!("k{i}")).await);
    }

    // Without parameters: the first 100, in creation order, and no Link (nothing follows).
    let (s, next, body) = page(&ann, &keys).await;
    assert_eq!((s, next, ids(&body)), (200, None, made.clone()));

    // limit=10: three pages, every key once, no Link on the last.
    let pages = walk(&ann, &format!("{keys}?limit=10"), async |_| {}).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    assert_eq!(pages.concat(), made);

    // Mid-walk, a key of the next page is revoked (it stays listed) and one is created: the
    // others are neither repeated nor skipped, and the new one comes last.
    let mut created = None;
    let pages = walk(&ann, &format!("{keys}?limit=10"), async |n| {
        if n == 1 {
            assert_eq!(ann.delete(&format!("{keys}/{}", made[12])).await.0, 200);
            created = Some(new_key(&ann, &org, "late").await);
        }
    })
    .await;
    let seen = pages.concat();
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len(), "no key twice");
    assert_eq!(seen[..25], made[..]);
    assert_eq!(seen[25..], [created.clone().unwrap()]);

    // A page of exactly `limit` links a next one only when more follow.
    let (_, next, body) = page(&ann, &format!("{keys}?limit=26")).await;
    assert_eq!((ids(&body).len(), next), (26, None));

    // Bad parameters: a JSON error naming the parameter.
    for bad in ["0", "1001", "x", "", "-1"] {
        let (s, body) = ann.get(&format!("{keys}?limit={bad}")).await;
        assert_validation(s, &body, "limit");
    }
    for bad in ["garbage", &made[0], "AAAAAAAAAAAAAAAAAAAAAAAA", "%00"] {
        let (s, body) = ann.get(&format!("{keys}?after={bad}")).await;
        assert_validation(s, &body, "after");
    }
    let (s, _, body) = page(&ann, &format!("{keys}?limit=1000")).await;
    assert_eq!((s, ids(&body).len()), (200, 26));

    // Another organization's listing with ann's cursor holds only its own keys; ann's list is
    // a 404 to bob.
    let (bob, _) = Api::signup(&g, "bob@example.com").await;
    let bobs = new_org(&admin, &bob).await;
    let bob_keys = [new_key(&bob, &bobs, "b0").await, new_key(&bob, &bobs, "b1").await];
    let (_, ann_next, _) = page(&ann, &format!("{keys}?limit=1")).await;
    let cursor = ann_next.unwrap().split("after=").nth(1).unwrap().to_owned();
    let (s, _, body) = page(&bob, &format!("/api/organizations/{bobs}/api-keys?after={cursor}")).await;
    assert_eq!(s, 200);
    let listed = ids(&body);
    assert!(listed.iter().all(|k| bob_keys.contains(k)), "{listed:?}");
    assert_eq!(listed, bob_keys, "bob's keys were made after ann's cursor");
    let (s, body) = bob.get(&format!("{keys}?after={cursor}")).await;
    assert_eq!(s, 404, "{body}");
    // A cursor from past bob's last key gives nothing.
    let (_, bob_next, _) = page(&bob, &format!("/api/organizations/{bobs}/api-keys?limit=1")).await;
    let (_, next, body) = page(&ann, &bob_next.unwrap().replace(&bobs, &org)).await;
    assert_eq!((ids(&body), next), (Vec::<String>::new(), None), "no key of ann's after bob's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_instances_are_listed_a_page_at_a_time() {
    let redis = Redis::start().await;
    let g: Gate = control_plane().await;
    let (admin, _) = Api::signup(&g, "root@example.com").await;
    let (ann, _) = Api::signup(&g, "ann@example.com").await;
    let org = new_org(&admin, &ann).await;
    let list = format!("/api/organizations/{org}/redis-instances");
    let mut made = Vec::new();
    for i in 0..5 {
        let body = json!({"name": format!("ext{i}"), "provisioner": "external", "url": redis.url()});
        let (s, inst) = ann.post(&list, body).await;
        assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
        made.push(inst["id"].as_str().unwrap().to_owned());
    }
    let pages = walk(&ann, &format!("{list}?limit=2"), async |_| {}).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), made);
    let (_, _, body) = page(&ann, &format!("{list}?limit=2")).await;
    assert_eq!(body[0]["health"], "healthy", "the items are the same views as before: {body}");

    // An instance of the next page deleted mid-walk, another created: every lasting one once.
    let mut created = None;
    let pages = walk(&ann, &format!("{list}?limit=2"), async |n| {
        if n == 1 {
            assert_eq!(ann.delete(&format!("{list}/{}", made[2])).await.0, 204);
            let body = json!({"name": "late", "provisioner": "external", "url": redis.url()});
            created = Some(ann.post(&list, body).await.1["id"].as_str().unwrap().to_owned());
        }
    })
    .await;
    let mut expected: Vec<String> = made.iter().filter(|i| **i != made[2]).cloned().collect();
    expected.push(created.unwrap());
    assert_eq!(pages.concat(), expected);

    let (s, body) = ann.get(&format!("{list}?limit=1001")).await;
    assert_validation(s, &body, "limit");
    let (s, body) = ann.get(&format!("{list}?after=not-a-cursor")).await;
    assert_validation(s, &body, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_names_at_most_a_hundred_instances() {
    let g = control_plane().await;
    let (ann, _) = Api::signup(&g, "ann@example.com").await;
    let (_, org) = ann.post("/api/organizations", json!({"name": "Acme"})).await;
    let org = org["id"].as_str().unwrap();
    // Checked before any lookup: ids that do not exist are refused for their number alone.
    let ids: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let (s, body) = ann
        .post(
            &format!("/api/organizations/{org}/api-keys"),
            json!({"name": "many", "scope": "read-only", "instance_ids": ids}),
        )
        .await;
    assert_eq!((s, body["field"].as_str()), (422, Some("instance_ids")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 100"), "{body}");
}
