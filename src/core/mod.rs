//! The engine-free inference core: manifest, ONNX Runtime sessions, the Helios-Distilled sampler,
//! prompt embeddings and stream state. Nothing here imports Bevy, so it builds, tests and benches with
//! `--no-default-features`.

pub mod embedding;
pub mod graph_contract;
pub mod limits;
pub mod manifest;
pub mod model;
pub mod runtime;
pub mod sampler;
pub mod stream;
pub mod text;
