use cache_core::cached;

struct Connection;

#[cached(prefix = "query", ttl = 60)]
async fn query(conn: &Connection, sql: &str) -> usize {
    let _ = conn;
    sql.len()
}

fn main() {}
