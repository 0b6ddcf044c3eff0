//! The contracts between this system's processes that are not gRPC (those
//! live in `proto`): the dfdaemon task API's JSON, the HTTP headers dfdaemons,
//! containerd and the operator exchange, the node report dfdaemon leaves on
//! its Pod for the operator, piece bitmaps, and where a task is cut into
//! pieces. Every side uses these types,
//! so a contract changes in one place.

pub mod bitmap;
pub mod headers;
pub mod node_report;
pub mod piece_length;
pub mod task;

pub use bitmap::{Bitmap, BitmapError, MAX_PIECES};
