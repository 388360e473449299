"""Where images come from: the DashScope client, local diffusion, the face swap, the judge.

Backends know nothing of rows, journals or runs; the scheduler drives them."""
