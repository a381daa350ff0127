//! Escalations to a human: the rules that pick a request, the admin API,
//! restarts, and the review page in a real headless Chromium (its sign-in, a
//! human answering, and a cross-site form that must not approve), and the
//! webhook that tells a human.

#[path = "../common/mod.rs"]
mod common;
mod review_csrf;
mod review_page;
mod rules_and_restarts;
mod webhook;
