"""Hugging Face interoperability: GPT-2 and BERT checkpoints in and out of lmjax, with their tokenizers.

  import_checkpoint.py  a local HF checkpoint directory -> an lmjax workdir (config.json, tokenizer/, checkpoints/0)
  export_checkpoint.py  an lmjax GPT or BERT run -> a directory transformers loads (config.json, model.safetensors,
                        tokenizer files)
  gpt2.py bert.py       config fields and weight layouts of each architecture, both directions
  tokenizers.py         GPT-2 byte-level BPE and BERT WordPiece behind lmjax's Tokenizer interface
  vocab.py              how HF token ids become lmjax ids (specials at 0..6) and embedding rows move with them
  files.py              reading/writing config.json, safetensors (numpy, no torch) and pytorch_model.bin (torch)

Nothing here downloads: checkpoints come from local directories. Reading safetensors needs the `hf` extra
(safetensors, regex); pytorch_model.bin needs torch.
"""
