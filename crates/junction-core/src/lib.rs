//! Junction's pure logic: the Segment event model and its normalization. No I/O.
