use cache_core::cached;

#[cached(prefix = "embedding")]
async fn embed(text: &str) -> usize {
    text.len()
}

fn main() {}
