use cache_core::cached;

#[cached(prefix = embedding, ttl = 60)]
async fn prefix_not_a_string(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "my embedding", ttl = 60)]
async fn prefix_with_a_space(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 1.5)]
async fn ttl_not_whole_seconds(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 0)]
async fn ttl_zero(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, codec = msgpack)]
async fn codec_not_a_string(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, codec = "yaml")]
async fn codec_unknown(text: &str) -> usize {
    text.len()
}

#[cached(prefix = "embedding", ttl = 60, skip = text)]
async fn skip_not_a_list(text: &str) -> usize {
    text.len()
}

fn main() {}
