//! Library half of tap-ebpf: empty, so tap-user can name the crate as a build dependency
//! and cargo rebuilds the XDP object when it changes (the aya template does the same).
#![no_std]
