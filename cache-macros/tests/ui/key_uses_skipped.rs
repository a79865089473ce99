use cache_core::cached;

#[cached(prefix = "profile", ttl = 60, key = format!("{user_id}:{request_id}"), skip(request_id))]
async fn profile(user_id: u64, request_id: &str) -> String {
    format!("user {user_id}")
}

#[cached(prefix = "profile", ttl = 60, key = user_id + request_id, skip(request_id))]
async fn profile_sum(user_id: u64, request_id: u64) -> u64 {
    user_id
}

#[cached(prefix = "ns", ttl = 60, key = cache.namespace().unwrap_or("none"), cache = cache)]
async fn namespace_of(cache: &cache_core::Cache) -> u64 {
    1
}

// A field or method of that name is not the argument: accepted.
#[cached(prefix = "len", ttl = 60, key = items.len(), skip(len))]
async fn length(items: Vec<u8>, len: usize) -> usize {
    len
}

fn main() {}
