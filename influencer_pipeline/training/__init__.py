"""LoRA training: presets, and trainers (kohya sd-scripts, embedded diffusers + peft) behind one interface."""
