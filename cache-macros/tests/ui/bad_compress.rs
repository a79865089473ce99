use cache_core::cached;

#[cached(prefix = "search", ttl = 60, compress = "big")]
async fn search(query: String) -> Vec<String> {
    vec![query]
}

fn main() {}
