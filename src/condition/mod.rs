//! The one condition language of sluice: SLI rules, filters, routes, and
//! the sample and throttle transforms all write `{ field = "status", gte =
//! 500 }`, combined with `all`, `any` and `not`. A condition is checked
//! when the config is read ([`Condition`]), compiled once into a
//! [`Program`] against a [`crate::event::FieldSet`], and judged per event
//! from the values the decoder has already located in it.

mod config;
mod program;

pub(crate) use config::{Condition, Pattern};
pub(crate) use program::{MetaValues, Program, Values};
