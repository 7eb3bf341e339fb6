//! Tidebase windows: DataFrame-style window specifications, window
//! assigners and continuous queries over topics.
//!
//! Nothing is implemented here yet; window functions in SQL run on
//! DataFusion's implementations through the server.
