//! The device ↔ relay wire protocol: frames and their codec (sans-IO).
