//! Reading and writing capture files.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use flowstate_capture::{
    pcap_bytes, read_capture, write_capture, CaptureErrorKind, CaptureReader, CaptureWriter, Frame,
};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};

fn frame(time_ns: i64, len: usize, ifindex: u32) -> Frame {
    Frame {
        time_ns,
        data: (0..len).map(|i| (i * 7) as u8).collect(),
        ifindex,
    }
}

fn read_bytes(bytes: Vec<u8>) -> Result<Vec<Frame>, flowstate_capture::CaptureError> {
    CaptureReader::new(Cursor::new(bytes), "mem.pcap")?.collect()
}

#[test]
fn pcap_round_trips_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.pcap");
    let frames = vec![
        frame(0, 60, 1),
        frame(1, 14, 1),
        frame(1_700_000_000_123_456_789, 1514, 1),
        frame(4_294_967_295_999_999_999, 0, 1),
    ];
    write_capture(&path, &frames).unwrap();
    assert_eq!(read_capture(&path).unwrap(), frames);
}

#[test]
fn the_streaming_reader_yields_the_same_frames_one_by_one() {
    let frames: Vec<Frame> = (0..1000).map(|i| frame(i * 1000, 64, 1)).collect();
    let mut reader = CaptureReader::new(Cursor::new(pcap_bytes(&frames).unwrap()), "m").unwrap();
    for expected in &frames {
        assert_eq!(&reader.next().unwrap().unwrap(), expected);
    }
    assert!(reader.next().is_none());
}

#[test]
fn pcap_has_no_interface_so_frames_read_back_on_interface_1() {
    let bytes = pcap_bytes(&[frame(5, 20, 7)]).unwrap();
    assert_eq!(read_bytes(bytes).unwrap()[0].ifindex, 1);
}

#[test]
fn microsecond_pcap_in_either_byte_order_reads_as_nanoseconds() {
    for endianness in [Endianness::Big, Endianness::Little] {
        let header = PcapHeader {
            ts_resolution: TsResolution::MicroSecond,
            endianness,
            ..PcapHeader::default()
        };
        let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
        let data = [1u8, 2, 3];
        let ts = Duration::new(12, 345_678_000);
        writer.write_packet(&PcapPacket::new(ts, 3, &data)).unwrap();
        let frames = read_bytes(writer.into_writer()).unwrap();
        assert_eq!(
            frames,
            vec![Frame {
                time_ns: 12_345_678_000,
                data: data.to_vec(),
                ifindex: 1
            }]
        );
    }
}

#[test]
fn a_pcap_record_longer_than_the_snaplen_on_the_wire_is_read() {
    // tcpdump -s 64 writes orig_len > snaplen; pcap-file's checked reader
    // refuses that, the raw path used here must not.
    let header = PcapHeader {
        snaplen: 64,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
    let data = [0u8; 64];
    let raw = pcap_file::pcap::RawPcapPacket {
        ts_sec: 1,
        ts_frac: 0,
        incl_len: 64,
        orig_len: 1500,
        data: Cow::Borrowed(&data[..]),
    };
    writer.write_raw_packet(&raw).unwrap();
    let frames = read_bytes(writer.into_writer()).unwrap();
    assert_eq!(frames[0].data.len(), 64);
    assert_eq!(frames[0].time_ns, 1_000_000_000);
}

fn idb(options: Vec<InterfaceDescriptionOption<'static>>) -> InterfaceDescriptionBlock<'static> {
    InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0xffff,
        options,
    }
}

fn epb(interface_id: u32, raw_units: u64, data: &[u8]) -> EnhancedPacketBlock<'_> {
    EnhancedPacketBlock {
        interface_id,
        // pcap-file writes the Duration's nanosecond count as the raw units.
        timestamp: Duration::from_nanos(raw_units),
        original_len: data.len() as u32,
        data: Cow::Borrowed(data),
        options: vec![],
    }
}

#[test]
fn pcapng_honours_if_tsresol_and_numbers_interfaces_from_one() {
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
    // Interface 0: no if_tsresol, so microseconds.
    w.write_pcapng_block(idb(vec![])).unwrap();
    // Interface 1: nanoseconds.
    w.write_pcapng_block(idb(vec![InterfaceDescriptionOption::IfTsResol(9)]))
        .unwrap();
    // Interface 2: 2^-10 s units, and 100 s of offset.
    w.write_pcapng_block(idb(vec![
        InterfaceDescriptionOption::IfTsResol(0x80 | 10),
        InterfaceDescriptionOption::IfTsOffset(100),
    ]))
    .unwrap();
    let data = [9u8; 42];
    w.write_pcapng_block(epb(0, 1_500_000, &data)).unwrap();
    w.write_pcapng_block(epb(1, 1_500_000_123, &data)).unwrap();
    w.write_pcapng_block(epb(2, 512, &data)).unwrap();
    w.write_pcapng_block(SimplePacketBlock {
        original_len: 42,
        data: Cow::Borrowed(&data),
    })
    .unwrap();

    let frames = read_bytes(w.into_inner()).unwrap();
    let got: Vec<(i64, u32)> = frames.iter().map(|f| (f.time_ns, f.ifindex)).collect();
    assert_eq!(
        got,
        vec![
            (1_500_000_000, 1),
            (1_500_000_123, 2),
            (100_500_000_000, 3),
            // A simple packet block has no time: it keeps the previous one.
            (100_500_000_000, 1),
        ]
    );
    assert!(frames.iter().all(|f| f.data == data));
}

#[test]
fn big_endian_pcapng_reads_too() {
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).unwrap();
    w.write_pcapng_block(idb(vec![InterfaceDescriptionOption::IfTsResol(3)]))
        .unwrap();
    w.write_pcapng_block(epb(0, 7, &[1, 2, 3])).unwrap();
    let frames = read_bytes(w.into_inner()).unwrap();
    assert_eq!(
        frames,
        vec![Frame {
            time_ns: 7_000_000,
            data: vec![1, 2, 3],
            ifindex: 1
        }]
    );
}

#[test]
fn a_pcapng_frame_on_an_undeclared_interface_is_an_error() {
    let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Big).unwrap();
    w.write_pcapng_block(idb(vec![])).unwrap();
    w.write_pcapng_block(epb(0, 1, &[1])).unwrap();
    let mut bytes = w.into_inner();
    // Re-point the packet to interface 5 (first EPB field, right after the
    // 8-byte block header); the writer itself would refuse it.
    let epb_start = bytes.len() - 36;
    bytes[epb_start + 8..epb_start + 12].copy_from_slice(&5u32.to_be_bytes());
    let err = read_bytes(bytes).unwrap_err();
    assert!(
        matches!(err.kind, CaptureErrorKind::UnknownInterface(5)),
        "{err}"
    );
    assert_eq!(err.frame, Some(1));
}

#[test]
fn non_ethernet_link_types_are_refused() {
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..PcapHeader::default()
    };
    let bytes = PcapWriter::with_header(Vec::new(), header)
        .unwrap()
        .into_writer();
    let err = read_bytes(bytes).unwrap_err();
    assert!(
        matches!(err.kind, CaptureErrorKind::UnsupportedLinkType(_)),
        "{err}"
    );

    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::LINUX_SLL, 0xffff))
        .unwrap();
    w.write_pcapng_block(epb(0, 1, &[1])).unwrap();
    let err = read_bytes(w.into_inner()).unwrap_err();
    assert!(
        matches!(err.kind, CaptureErrorKind::UnsupportedLinkType(_)),
        "{err}"
    );
}

#[test]
fn garbage_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, b"hello, this is not a capture").unwrap();
    let err = read_capture(&path).unwrap_err();
    assert!(matches!(err.kind, CaptureErrorKind::UnknownFormat(_)));
    let message = err.to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("not a pcap or pcapng file"), "{message}");

    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        read_capture(&empty).unwrap_err().kind,
        CaptureErrorKind::UnknownFormat(_)
    ));
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let err = read_capture(Path::new("/nonexistent/x.pcap")).unwrap_err();
    assert!(matches!(err.kind, CaptureErrorKind::Io(_)));
    assert!(
        err.to_string().starts_with("/nonexistent/x.pcap: "),
        "{err}"
    );
}

#[test]
fn a_capture_cut_mid_frame_reports_the_frame() {
    let bytes = pcap_bytes(&[frame(1, 40, 1), frame(2, 40, 1), frame(3, 40, 1)]).unwrap();
    let cut = bytes[..bytes.len() - 10].to_vec();
    let mut reader = CaptureReader::new(Cursor::new(cut), "cut.pcap").unwrap();
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_ok());
    let err = reader.next().unwrap().unwrap_err();
    assert!(matches!(err.kind, CaptureErrorKind::Truncated), "{err}");
    assert_eq!(
        err.to_string(),
        "cut.pcap: frame 3: the file ends in the middle of a header or frame"
    );
    // The reader stops after an error.
    assert!(reader.next().is_none());

    // A cut inside the file header is an error from the start.
    assert!(matches!(
        read_bytes(bytes[..10].to_vec()).unwrap_err().kind,
        CaptureErrorKind::Truncated
    ));
}

#[test]
fn a_bad_microsecond_fraction_is_refused() {
    let mut bytes = pcap_bytes(&[frame(0, 4, 1)]).unwrap();
    // Switch to the microsecond magic: the 999_999_999 fraction below is
    // then out of range.
    bytes[..4].copy_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    bytes[28..32].copy_from_slice(&999_999_999u32.to_le_bytes());
    let err = read_bytes(bytes).unwrap_err();
    assert!(
        matches!(err.kind, CaptureErrorKind::BadTimestamp(_)),
        "{err}"
    );
}

#[test]
fn the_writer_refuses_what_pcap_cannot_hold() {
    let mut w = CaptureWriter::new(Vec::new(), "out.pcap").unwrap();
    let err = w.write(&frame(-1, 10, 1)).unwrap_err();
    assert!(
        matches!(err.kind, CaptureErrorKind::BadTimestamp(_)),
        "{err}"
    );
    assert!(err.to_string().starts_with("out.pcap: frame 1: "), "{err}");
    let err = w
        .write(&frame(4_294_967_296_000_000_000, 10, 1))
        .unwrap_err();
    assert!(matches!(err.kind, CaptureErrorKind::BadTimestamp(_)));
    let err = w.write(&frame(0, 300_000, 1)).unwrap_err();
    assert!(matches!(err.kind, CaptureErrorKind::Malformed(_)));
}

#[test]
fn flushed_frames_are_readable_while_the_writer_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.pcap");
    let mut writer = CaptureWriter::create(&path).unwrap();
    writer.write(&frame(1, 30, 1)).unwrap();
    writer.write(&frame(2, 30, 1)).unwrap();
    writer.flush().unwrap();
    assert_eq!(read_capture(&path).unwrap().len(), 2);
    writer.write(&frame(3, 30, 1)).unwrap();
    writer.finish().unwrap();
    assert_eq!(read_capture(&path).unwrap().len(), 3);
}

#[test]
fn read_into_reuses_one_buffer_and_yields_the_iterators_frames() {
    let frames = flowstate_capture::synth::tokenbucket_demo();
    let bytes = flowstate_capture::pcap_bytes(&frames).unwrap();
    let mut reader =
        flowstate_capture::CaptureReader::new(std::io::Cursor::new(bytes), "mem.pcap").unwrap();
    let mut frame = flowstate_capture::Frame {
        time_ns: -1,
        data: Vec::with_capacity(4096),
        ifindex: 0,
    };
    let buffer = frame.data.as_ptr();
    let mut seen = 0;
    while let Some(read) = reader.read_into(&mut frame) {
        read.unwrap();
        assert_eq!(frame, frames[seen]);
        assert_eq!(frame.data.as_ptr(), buffer, "no reallocation");
        seen += 1;
    }
    assert_eq!(seen, frames.len());
}
