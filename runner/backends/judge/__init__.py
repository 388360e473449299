"""The local VIEScore judge: asks a vision-language model to score candidates."""
