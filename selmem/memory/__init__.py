"""The parts of a layer's memory, one file per row of DESIGN.md section 2."""
