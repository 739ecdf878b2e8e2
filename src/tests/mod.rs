//! The core's test suites, kept apart from the code as quinn-proto keeps
//! its own: the simulated world ([`sim`]: 1Password, Devo and the store,
//! with seeded faults and a virtual clock), the property tests of every
//! parser of outside input ([`fuzz`]), and the tick's own tests
//! (`tick.rs`, a child of `crate::tick` so that it can drive the state
//! machine's private steps).

mod fuzz;
pub(crate) mod sim;
