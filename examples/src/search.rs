//! The search service's domain: deterministic embeddings (feature hashing),
//! a BM25 index over a corpus that ships with the repository, and a
//! `SearchService` whose two expensive calls are memoized with `#[cached]`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::cached;
use serde::{Deserialize, Serialize};

/// Dimensions of an embedding (as in all-MiniLM-L6-v2, so payload sizes are realistic).
pub const DIMENSIONS: usize = 384;

/// The corpus: paragraphs of `examples/data/corpus.txt`, first line the title.
const CORPUS: &str = include_str!("../data/corpus.txt");

/// Turns text into a 384-dimension, L2-normalised vector by feature hashing of
/// words, word pairs and character trigrams. Deterministic, no model download.
#[derive(Debug, Default)]
pub struct Embedder {
    computed: AtomicU64,
}

impl Embedder {
    /// The embedding of `text`, memoized for a day: the same text always
    /// gives the same vector, so any service can share the entry.
    #[cached(prefix = "embedding", ttl = 86400)]
    pub async fn embed(&self, text: &str) -> Vec<f32> {
        self.computed.fetch_add(1, Ordering::Relaxed);
        embed_text(text)
    }

    /// How many embeddings were computed (cache misses).
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }
}

/// Lower-case alphanumeric words.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn add_feature(vector: &mut [f32], feature: &str, weight: f32) {
    let hash = fnv1a(feature.as_bytes());
    let index = (hash % DIMENSIONS as u64) as usize;
    // The top bit picks the sign, so collisions cancel out on average.
    let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
    vector[index] += sign * weight;
}

/// The embedding itself (what [`Embedder::embed`] memoizes).
pub fn embed_text(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0f32; DIMENSIONS];
    let words = tokenize(text);
    for word in &words {
        add_feature(&mut vector, &format!("w:{word}"), 1.0);
        let marked: Vec<char> = format!("<{word}>").chars().collect();
        for trigram in marked.windows(3) {
            add_feature(
                &mut vector,
                &format!("c:{}", trigram.iter().collect::<String>()),
                0.3,
            );
        }
    }
    for pair in words.windows(2) {
        add_feature(&mut vector, &format!("b:{} {}", pair[0], pair[1]), 0.7);
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// Cosine similarity of two L2-normalised vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One document of the corpus.
#[derive(Debug, Clone)]
pub struct Document {
    /// Position in the corpus.
    pub id: usize,
    /// First line of the paragraph.
    pub title: String,
    /// The rest of the paragraph.
    pub text: String,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Document id.
    pub id: usize,
    /// Document title.
    pub title: String,
    /// Combined score: BM25 plus cosine similarity of the embeddings.
    pub score: f32,
    /// The BM25 part.
    pub bm25: f32,
    /// The embedding part.
    pub cosine: f32,
}

/// A BM25 index with one embedding per document.
#[derive(Debug)]
pub struct Index {
    docs: Vec<Document>,
    /// term -> (document, term frequency)
    postings: HashMap<String, Vec<(usize, u32)>>,
    lengths: Vec<usize>,
    average_length: f32,
    embeddings: Vec<Vec<f32>>,
}

const K1: f32 = 1.2;
const B: f32 = 0.75;

impl Index {
    /// The index over the shipped corpus.
    pub fn shipped() -> Index {
        Index::build(parse_corpus(CORPUS))
    }

    /// Indexes `docs`.
    pub fn build(docs: Vec<Document>) -> Index {
        let mut postings: HashMap<String, Vec<(usize, u32)>> = HashMap::new();
        let mut lengths = Vec::with_capacity(docs.len());
        let mut embeddings = Vec::with_capacity(docs.len());
        for doc in &docs {
            let full = format!("{} {}", doc.title, doc.text);
            let tokens = tokenize(&full);
            lengths.push(tokens.len());
            let mut counts: HashMap<String, u32> = HashMap::new();
            for token in tokens {
                *counts.entry(token).or_default() += 1;
            }
            for (term, count) in counts {
                postings.entry(term).or_default().push((doc.id, count));
            }
            embeddings.push(embed_text(&full));
        }
        let average_length = lengths.iter().sum::<usize>() as f32 / lengths.len().max(1) as f32;
        Index {
            docs,
            postings,
            lengths,
            average_length,
            embeddings,
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// `true` for an empty corpus.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The `k` best documents for `query`, given the query's embedding.
    pub fn rank(&self, query: &str, query_embedding: &[f32], k: usize) -> Vec<Hit> {
        let n = self.docs.len() as f32;
        let mut bm25 = vec![0.0f32; self.docs.len()];
        let mut terms = tokenize(query);
        terms.sort();
        terms.dedup();
        for term in terms {
            let Some(postings) = self.postings.get(&term) else {
                continue;
            };
            let df = postings.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(doc, tf) in postings {
                let tf = tf as f32;
                let norm = 1.0 - B + B * self.lengths[doc] as f32 / self.average_length;
                bm25[doc] += idf * tf * (K1 + 1.0) / (tf + K1 * norm);
            }
        }
        let mut hits: Vec<Hit> = self
            .docs
            .iter()
            .map(|doc| {
                let cosine = cosine(query_embedding, &self.embeddings[doc.id]);
                Hit {
                    id: doc.id,
                    title: doc.title.clone(),
                    score: bm25[doc.id] + cosine,
                    bm25: bm25[doc.id],
                    cosine,
                }
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.truncate(k);
        hits
    }
}

/// Paragraphs separated by blank lines; the first line of each is its title.
pub fn parse_corpus(text: &str) -> Vec<Document> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(id, paragraph)| {
            let (title, body) = paragraph.split_once('\n').unwrap_or((paragraph, ""));
            Document {
                id,
                title: title.trim().to_string(),
                text: body.trim().to_string(),
            }
        })
        .collect()
}

/// Search over the shipped corpus; `search` and `Embedder::embed` are memoized.
#[derive(Debug)]
pub struct SearchService {
    index: Index,
    embedder: Embedder,
    computed: AtomicU64,
}

impl Default for SearchService {
    fn default() -> Self {
        SearchService {
            index: Index::shipped(),
            embedder: Embedder::default(),
            computed: AtomicU64::new(0),
        }
    }
}

impl SearchService {
    /// The `k` best documents for `query`, memoized for an hour (`self` is not
    /// part of the key, so every instance of the service shares entries).
    #[cached(prefix = "search", ttl = 3600)]
    pub async fn search(&self, query: &str, k: usize) -> Vec<Hit> {
        self.computed.fetch_add(1, Ordering::Relaxed);
        let embedding = self.embedder.embed(query).await;
        self.index.rank(query, &embedding, k)
    }

    /// The embedding of `text`, memoized: shares its entries with the
    /// embeddings [`SearchService::search`] computes for its queries.
    pub async fn embed(&self, text: &str) -> Vec<f32> {
        self.embedder.embed(text).await
    }

    /// How many searches were computed (cache misses), and embeddings.
    pub fn computed(&self) -> (u64, u64) {
        (
            self.computed.load(Ordering::Relaxed),
            self.embedder.computed(),
        )
    }

    /// Documents in the index.
    pub fn documents(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_normalised_and_deterministic() {
        let a = embed_text("Redis cluster hash slots");
        assert_eq!(a.len(), DIMENSIONS);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert_eq!(a, embed_text("Redis cluster hash slots"));
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let q = embed_text("rate limiting window");
        let near = embed_text("fixed window rate limiting counts requests");
        let far = embed_text("portfolio valuation of balances");
        assert!(cosine(&q, &near) > cosine(&q, &far));
    }

    #[test]
    fn bm25_ranks_the_matching_document_first() {
        let index = Index::shipped();
        assert!(index.len() > 20);
        let query = "SCAN KEYS blocking";
        let hits = index.rank(query, &embed_text(query), 3);
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].title, "SCAN versus KEYS");
    }
}
