use cache_core::cached;

trait Scorer {
    async fn score(&self, word: String) -> u32;
}

struct Length;

impl Scorer for Length {
    #[cached(prefix = "score", ttl = 60)]
    async fn score(&self, word: String) -> u32 {
        word.len() as u32
    }
}

fn main() {}
