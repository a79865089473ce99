use cache_core::{Cache, EntryOptions};
use std::time::Duration;

async fn run_in_tasks<F, Fut>(op: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move { op(0).await }).await.unwrap();
}

fn embedding(text: &str) -> Vec<f32> {
    vec![text.len() as f32]
}

#[tokio::test]
async fn calls_run_in_tasks_made_by_a_closure() {
    let cache = Cache::in_memory();
    let text: &'static str = "abc".to_string().leak();
    let options: &'static EntryOptions =
        Box::leak(Box::new(EntryOptions::ttl(Duration::from_secs(60))));
    let function_key: &'static str = format!("bench-fn:{text}").leak();
    let compute = move || async move { embedding(text) };

    for _ in 0..2 {
        let c = cache.clone();
        run_in_tasks(move |_| {
            let c = c.clone();
            async move {
                assert_eq!(c.get_or_set(function_key, options, compute).await.len(), 1);
            }
        })
        .await;
    }
}

#[cache_core::cached(prefix = "size", ttl = 60, cache = cache, skip(cache))]
async fn sized(cache: &Cache, text: &str) -> Vec<f32> {
    embedding(text)
}

#[test]
fn future_sizes() {
    let cache = Cache::in_memory();
    let options = EntryOptions::ttl(Duration::from_secs(60));
    let a = sized(&cache, "x");
    let b = cache.get_or_set("k", &options, || async { vec![1.0f32] });
    println!(
        "cached: {} bytes, get_or_set: {} bytes",
        std::mem::size_of_val(&a),
        std::mem::size_of_val(&b)
    );
}
