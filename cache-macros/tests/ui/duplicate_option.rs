use cache_core::cached;

#[cached(prefix = "embedding", ttl = 60, prefix = "other")]
async fn embed(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, ttl = 5)]
async fn embed_ttl(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, skip(model), skip(text))]
async fn embed_skip(model: &str, text: &str) -> usize {
    model.len() + text.len()
}

#[cached(prefix = "embedding", ttl = 60, cache = None::<cache_core::Cache>, cache = None::<cache_core::Cache>)]
async fn embed_cache(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, key = text, key = text)]
async fn embed_key(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, codec = "json", codec = "json")]
async fn embed_codec(text: &str) -> usize {
    text.len()
}

fn main() {}
