//! The local store of guest kernels behind `volt kernel add|list|rm|default|verify`.
