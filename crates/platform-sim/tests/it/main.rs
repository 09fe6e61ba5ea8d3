//! Integration tests: the simulator served on loopback, spoken to over real HTTP/1.1.
//! One test binary so the suite links once.

mod binary;
mod control;
mod epeis;
mod http;
mod lbbtech;
mod outage;
mod pyun;
mod tcec;
