"""Image generation: ComfyUI (production) and an embedded diffusers engine behind one interface."""
