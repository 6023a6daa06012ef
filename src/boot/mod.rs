//! Guest boot: everything written into guest memory and vCPU registers before the first KVM_RUN.
