"""Synthesis: batch generation with one seed per pair, manifest, mask filters, replay."""
