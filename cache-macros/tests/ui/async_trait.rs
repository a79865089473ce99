use async_trait::async_trait;
use cache_core::cached;

#[async_trait]
trait Search {
    async fn search(&self, query: String) -> Vec<String>;
}

struct Service;

#[async_trait]
impl Search for Service {
    #[cached(prefix = "search", ttl = 60)]
    async fn search(&self, query: String) -> Vec<String> {
        vec![query]
    }
}

fn main() {}
