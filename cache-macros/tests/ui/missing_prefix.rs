use cache_core::cached;

#[cached(ttl = 60)]
async fn embed(text: &str) -> usize {
    text.len()
}

fn main() {}
