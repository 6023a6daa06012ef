//! Process sandboxing: seccomp-BPF filters per thread kind and a Landlock file-system ruleset.
