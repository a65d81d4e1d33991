//! The reconcile loop: triggers in, reconciles out, in the style of kube-runtime's `Controller`.

pub mod scheduler;
