"""Tests for LoRA presets and trainers."""
