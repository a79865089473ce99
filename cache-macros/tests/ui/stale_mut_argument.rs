use cache_core::cached;

// A refresh runs after the call returned, on owned copies of the arguments:
// a `&mut` argument cannot be copied for it.
#[cached(prefix = "quote", ttl = 5, stale = 60)]
async fn quote(symbol: &str, seen: &mut Vec<String>) -> u64 {
    seen.push(symbol.to_owned());
    symbol.len() as u64
}

fn main() {}
