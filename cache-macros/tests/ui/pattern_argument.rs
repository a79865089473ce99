use cache_core::cached;

#[cached(prefix = "sum", ttl = 60)]
async fn sum((a, b): (u8, u8)) -> u16 {
    u16::from(a) + u16::from(b)
}

fn main() {}
