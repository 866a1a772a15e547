"""Tables (markdown/CSV/JSON) and figures (sample grids with mask overlays, curves) of a run."""
