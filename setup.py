"""lmjax: a JAX/Flax research framework for language models."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="lmjax",
    version="0.1.0",
    description="A JAX/Flax research framework for language models: GPT, BERT and encoder-decoder models.",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lmjax", "lmjax.*"]),
    package_data={"lmjax.data.corpus": ["*.txt.xz", "README.md"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10.2",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.5.1",
        "importlib_resources>=6.0",  # tfds builders need it when TensorFlow is absent
        "grain>=0.2.10",
        "ml-collections>=1.0.0",
        "absl-py>=2.1.0",
        "sentencepiece>=0.2.0",
        "sacrebleu>=2.4",  # BLEU and chrF of translations, with their signatures
        "numpy>=1.26",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # Hugging Face GPT-2/BERT import and export (lmjax.hf): safetensors through numpy, GPT-2's tokenizer regex.
        "hf": ["safetensors>=0.4", "regex>=2023.0"],
        # Reading pytorch_model.bin checkpoints (model.safetensors needs no torch).
        "torch": ["torch>=2.1"],
        # transformers and torch build the reference models of tests/test_hf.py. torch==2.13.0 is the CPU build
        # these machines keep locally; a range admitting newer releases would pull several GB of CUDA wheels.
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "safetensors>=0.4", "regex>=2023.0", "transformers>=4.40",
                 "torch==2.13.0",
                 "rouge-score>=0.1.2"],  # the reference ROUGE that lmjax.text_metrics is tested against
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
