"""grain-based data: sources, tokenizers, preprocessing, the training input pipeline and eval batches."""
from hyperclip_jax.data.input_pipeline import (
    make_eval_batches,
    make_prompt_tokens,
    make_source_eval_batches,
    make_train_iterator,
)
from hyperclip_jax.data.sources import get_source
from hyperclip_jax.data.sources.demo import DemoSource, ZeroShotTask, demo_tasks
from hyperclip_jax.data.tokenizers import get_tokenizer

__all__ = ["DemoSource", "ZeroShotTask", "demo_tasks", "get_source", "get_tokenizer", "make_eval_batches",
           "make_prompt_tokens", "make_source_eval_batches", "make_train_iterator"]
