"""DALL-E style generator: discrete VAE + sparse-attention transformer (sibling of the CLIP core)."""
