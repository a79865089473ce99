use cache_core::cached;

struct Connection;

impl Connection {
    async fn price(&self, symbol: &str) -> u64 {
        symbol.len() as u64
    }
}

// A refresh gets owned copies of borrowed arguments: `&Connection` needs
// `Connection: Clone` (an `Arc<Connection>` argument would do too).
#[cached(prefix = "quote", ttl = 5, stale = 60, skip(conn))]
async fn quote(conn: &Connection, symbol: &str) -> u64 {
    conn.price(symbol).await
}

fn main() {}
