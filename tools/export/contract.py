"""Graph keys and port names of the graph contract (docs/graph-contract.md).

Mirrors src/core/graph_contract.rs: `cargo test` (graph_contract::tests) fails when the two differ, so
change both together. export.py builds its graphs' names from these.
"""

# Graph keys (file = key + ".onnx"); staged keys are PREFIX + stage index.
TEXT_ENCODER = "text_encoder"
VAE_DECODER = "vae_decoder"
VAE_DECODER_RGBA8 = "vae_decoder_rgba8"
VAE_ENCODER_IMAGE = "vae_encoder_image"
VAE_ENCODER_CLIP = "vae_encoder_clip"
PYRAMID_DOWNSAMPLE = "pyramid_downsample"
HISTORY_PUSH = "history_push"
HISTORY_SLICES = "history_slices"
DENOISER_PREFIX = "denoiser_stage"
RENOISE_PREFIX = "pyramid_renoise_stage"
DMD_STEP_PREFIX = "dmd_step_stage"

# Ports.
HIDDEN_STATES = "hidden_states"
TIMESTEP = "timestep"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
LATENTS_HISTORY_SHORT = "latents_history_short"
LATENTS_HISTORY_MID = "latents_history_mid"
LATENTS_HISTORY_LONG = "latents_history_long"
VELOCITY = "velocity"
LATENTS = "latents"
VIDEO = "video"
RGBA = "rgba"
MEAN = "mean"
LOGVAR = "logvar"
NOISE = "noise"
START = "start"
X0 = "x0"
Z = "z"
SAMPLE = "sample"
SIGMA = "sigma"
SIGMA_NEXT = "sigma_next"
NEXT = "next"
HISTORY = "history"
CHUNK = "chunk"
HISTORY_NEXT = "history_next"
FIRST_FRAME = "first_frame"
ANCHOR = "anchor"
SHORT = "short"
MID = "mid"
LONG = "long"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"


def denoiser(stage: int) -> str:
    return f"{DENOISER_PREFIX}{stage}"


def pyramid_renoise(stage: int) -> str:
    return f"{RENOISE_PREFIX}{stage}"


def dmd_step(stage: int) -> str:
    return f"{DMD_STEP_PREFIX}{stage}"
