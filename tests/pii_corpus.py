"""A labelled corpus for the personal-data detector (`chatlog.schemas.pii`).

Written for this project: support-chat sentences, each with the personal data it holds
(kind and exact text), and hard negatives that look personal and are not: order,
tracking, RMA and ticket numbers, prices, dates, times, postcodes, versions. The unit
tests measure recall per kind and the false-positive rate on the negatives from it; the
card, IBAN and phone values are the issuers' published test numbers or validated by
`phonenumbers`, never a real person's (the phone numbers added with redaction are in
ranges reserved for fiction).

Grown with the redaction step (issue 14) before the detector was changed: the first
measurement on it found phones written with the 00 prefix, IPv4-mapped IPv6 addresses,
Stripe, GitHub fine-grained, GitLab and Google keys, and a Bearer token at a sentence's
end missed, and a barcode taken for a card; the detector learnt those rules, and
`make bench` (the ``pii`` scenario) prints the figures.
"""

from __future__ import annotations

# Each value is embedded in several sentences, so the surroundings vary too.
EMAILS = [
    "ada.lovelace@example.com", "j.smith+orders@mail.example.org", "chen_wei@example.co.uk",
    "ops-team@sub.example.io", "o'brien@example.ie".replace("'", ""), "x@example.de",
    "first.last@example-shop.com", "support.2024@example.net", "MARIA@EXAMPLE.ES",
    "anna-lena.mueller@example.at",
    # Added with the redaction step: more shapes people type.
    "paula.rossi@example.com", "li.na@mail.example.cn", "jose.garcia@example.com.mx",
    "noreply+ticket-48213@support.example.com", "b@example.museum", "first_last@example.travel",
    "user123@example.xyz", "k.o'neil@example.com".replace("'", ""), "a.b.c.d@example.co.jp",
    "sales@example-widgets.de", "Hans.Mueller@Example.DE", "pat@mail.example.email",
]  # fmt: skip
PHONES = [
    "+49 30 901820", "+1 650-253-0000", "+44 20 7946 0958", "+33 1 42 68 53 00",
    "+81 3-1234-5678", "+61 2 9374 4000", "+34 912 34 56 78", "+39 06 6988 4857",
    "+31 20 624 1111", "+46 8 123 456 78", "+41 44 668 18 00", "+48 22 123 45 67",
    "+1 (212) 555-0123", "+49 151 23456789", "+353 1 677 0095", "+45 33 12 34 56",
    # Added with the redaction step: fictional ranges (Ofcom drama numbers, US 555-01xx,
    # ACMA and ARCEP fiction numbers) in the ways people write them.
    "+44 20 7946 0018", "+44 161 496 0123", "+442079460999", "+44 (0)20 7946 0123",
    "+1 212 555 0147", "+1.312.555.0178", "+1-202-555-0191", "+1 415 555 0132",
    "+1 604 555 0123", "+61 2 5550 1234", "+61 491 570 156", "+33 1 99 00 12 34",
    "+49 (0)30 901820", "0044 20 7946 0345",
]  # fmt: skip
CARDS = [
    "4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009", "6011000000000004",
    "4012 8888 8888 1881", "5105105105105100", "3782 822463 10005", "371449635398431",
    "6011 1111 1111 1117", "3530111333300000", "4222222222222",
    # Added with the redaction step: processors' published test numbers, all networks.
    "4242 4242 4242 4242", "4000 0566 5566 5556", "2223 0031 2200 3222", "5200 8282 8282 8210",
    "3714 496353 98431", "3056 9300 0902 0004", "36227206271667", "3566 0020 2036 0505",
    "6200 0000 0000 0005", "4000002500003155", "5555 5555 5555 4444", "2720 9999 9999 9996",
    "3782-822463-10005", "4111-1111-1111-1111",
]  # fmt: skip
IBANS = [
    "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32",
    "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300", "ES91 2100 0418 4502 0005 1332",
    "IT60 X054 2811 1010 0000 0123 456", "CH93 0076 2011 6238 5295 7", "BE68 5390 0754 7034",
    "AT61 1904 3002 3457 3201", "PL61 1090 1014 0000 0712 1981 2874",
    # Added with the redaction step: the IBAN registry's examples of more countries.
    "AD12 0001 2030 2003 5910 0100", "CZ65 0800 0000 1920 0014 5399", "DK50 0040 0440 1162 43",
    "FI21 1234 5600 0007 85", "GR16 0110 1250 0000 0001 2300 695", "IE29 AIBK 9311 5212 3456 78",
    "LU28 0019 4006 4475 0000", "NO93 8601 1117 947", "PT50 0002 0123 1234 5678 9015 4",
    "SE45 5000 0000 0583 9825 7466", "RO49 AAAA 1B31 0075 9384 0000", "LT12 1000 0111 0100 1000",
    "HR12 1001 0051 8630 0016 0", "de89370400440532013000", "GB29NWBK60161331926819",
]  # fmt: skip
SSNS = [
    "123-45-6789", "078-05-1121", "219-09-9999", "457-55-5462", "536-90-4399",
    "001-01-0001", "772-12-3456", "321-54-9876",
]  # fmt: skip
IPS = [
    "192.168.1.20",
    "10.0.0.1",
    "203.0.113.7",
    "2001:db8::8a2e:370:7334",
    "fe80::1ff:fe23:4567:890a",
    "198.51.100.42", "172.16.254.1", "8.8.8.8", "2001:db8:85a3::8a2e:370:7334",
    "::ffff:192.0.2.128",
]  # fmt: skip
SECRETS = [
    "sk-proj-a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuV",
    "sk-3xAMPLEkeyN0tRealButL0ngEnough1234",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "xoxb-123456789012-abcdefghijkl",
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAKC\n-----END RSA PRIVATE KEY-----",
    # Added with the redaction step: more of what people paste (invented values).
    "sk-ant-api03-Xy7aB3cD9eF1gH5iJ2kL8mN4oP6qR0sT",
    "sk_live_51HxYzAbCdEfGhIjKlMnOpQrSt",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "ASIAY34FZKBOKMUTVV7A",
    "AKIA2OGYBAH6EXAMPLE7",
    "gho_16C7e42F292c6912E7710c838347Ae178B4a",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN",
    "glpat-xYz12AbC34dEf56GhI78j",
    "xoxp-2389416573-1234567890-abcdefABCDEF",
    "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "Bearer 3f9a1c2e7b6d4a8f9e0c1b2a3d4e5f6a7b8c9d0e",
    # Added after review: JSON Web Tokens pasted without "Bearer".
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJhdXRoLmV4YW1wbGUifQ.c2lnbmF0dXJlLXZhbHVlLWhlcmU",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----",
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----",
]

TEMPLATES = [
    "My {what} is {value}, please update it.",
    "you can reach me on {value} after 5pm",
    "{value}",
    "Ticket #CS-90417: customer gave {value} for the refund of order #BW-48213.",
    "(contact: {value})",
    # Added with the redaction step: a pasted form, a quote, a sentence's end.
    "Name: Paula Rossi\nOrder: #BW-48213\n{what}: {value}\nDate: 14.03.2025",
    'The customer wrote: "please use {value} from now on"',
    "Thanks, that was {value}.",
]

KINDS = {
    "EMAIL": EMAILS, "PHONE": PHONES, "CARD": CARDS, "IBAN": IBANS, "SSN": SSNS, "IP": IPS,
    "SECRET": SECRETS,
}  # fmt: skip


# Secrets found only where the text says what they are: (text, kind, the secret).
IN_CONTEXT = [
    (f"aws_secret_access_key = {key}", "SECRET", key)
    for key in (
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
    )
] + [
    ("AWS_SECRET_ACCESS_KEY=Xk9pQ2rT7vW1yZ3bD5fH8jL0nM4sA6cE/gI+uO2w", "SECRET",
     "Xk9pQ2rT7vW1yZ3bD5fH8jL0nM4sA6cE/gI+uO2w"),
    ("here is my AWS secret access key: 7Hn2Kq9Lw4Rt6Yp8Zs1Xv3Bm5Nc0Dd/Ff+Gg2Hh4", "SECRET",
     "7Hn2Kq9Lw4Rt6Yp8Zs1Xv3Bm5Nc0Dd/Ff+Gg2Hh4"),
]  # fmt: skip


def positives() -> list[tuple[str, str, str]]:
    """(text, kind, the exact personal string in it)."""
    return [
        (template.format(what=kind.lower(), value=value), kind, value)
        for kind, values in KINDS.items()
        for value in values
        for template in TEMPLATES
    ] + IN_CONTEXT


HARD_NEGATIVES = [
    # A SHA-1 beside the words that make a 40-character run a secret: not one.
    "The aws secret rotation landed in commit 3f9a1c2e7b6d4a8f9e0c1b2a3d4e5f6a7b8c9d0e.",
    "Your order #BW-48213 shipped today.",
    "Tracking number JJD0002249, DHL.",
    "RMA-77120 is open for the espresso machine.",
    "Case #CS-90417 was escalated.",
    "The refund of 249.90 EUR is on its way.",
    "Delivery on 14.03.2025 between 9:00 and 13:00.",
    "It costs $1,299.00 plus 12.50 shipping.",
    "Postcode 10115 Berlin, 75008 Paris.",
    "Firmware 2.4.1 fixes the leak.",
    "Model BX-2000 serial 48213-77120.",
    "Call centre opens at 08:30.",
    "We ship within 3-5 working days.",
    "Invoice INV-2024-000123 is attached.",
    "Your voucher code is SPRING25.",
    "The pickup is booked for 2025-03-14T09:00.",
    "Quote #M7-1000 if you need us again.",
    "Page 12 of 48.",
    "Order total: 1234.56",
    "Reference 2024/03/14-0042.",
    "Your loyalty number is 1000 2000 3000.",
    "SKU 4006381333931 is back in stock.",
    "The parcel weighs 2.5 kg, 40x30x20 cm.",
    "Room 404 on floor 3.",
    "Flight LH 2024 lands at 13:35.",
    "The hose part no. 55-1090-1014 fits.",
    "Error code E-1203 means descaling.",
    "Version 10.0.19045 of the app.",
    "Batch 2023-11-07/B is recalled.",
    "Our warehouse is at Unit 7, 12 Dock Road.",
    "Points balance: 15,000.",
    "Meeting ID 812 3456 7890.",
    "Store hours 9-18, Sat 10-16.",
    "Ticket 0042-1181-77 is closed.",
    "Use discount WELCOME10 at checkout.",
    "Temperature 92.5 C is normal.",
    "Tracking 1Z999AA10123456784 (UPS).",
    "Reorder 3x filters (#F-334).",
    "The serial starts with BW48213.",
    "Call us at extension 4711.",
    "Estimated delivery: 3 March 2025.",
    "Account tier GOLD-2.",
    "Case 2024-12-06-15:30 noted.",
    "Warranty until 2027.",
    "Sent 2 of 3 parcels.",
    "Your order number is 5105-1051-0510.",
    "We refunded 19.90 + 12.50 = 32.40 EUR.",
    "Pin the version to 1.2.3.",
    "the ratio was 3:2:1",
    "coordinates 52.5200, 13.4050",
    "ISBN 978-3-16-148410-0",
    # Added with the redaction step: more of what support chats are full of.
    "Order #BW-48214 and #BW-48215 were merged.",
    "Your tracking ID is JJD0002249 and JJD0002250.",
    "DHL tracking JJD014600003795469382 is in transit.",
    "USPS tracking 9400 1000 0000 0000 0000 00 shows delivered.",
    "Royal Mail ref AB123456789GB left the depot.",
    "FedEx 7712 3456 7890 will arrive Friday.",
    "RMA number RMA-2025-00417 was approved.",
    "Please quote RMA 48213-B on the box.",
    "Return label R-0042-7731 printed.",
    "Order 1002003004 is ready for pickup.",
    "Your order no. 304-1234567-8901234 (Amazon) shipped.",
    "Invoice 2025/000417 is paid.",
    "Credit note CN-2025-0042 for 49.99 EUR.",
    "The price dropped from €1.299,00 to €999,00.",
    "Total: USD 2,450.75 incl. VAT 19%.",
    "It was ¥12,800 on the receipt.",
    "Subtotal 1,234,567.89 GBP.",
    "Delivery window 09:30-12:30 on 06/12/2026.",
    "Opening hours Mon-Fri 08:00-20:00, Sat 09:00-14:00.",
    "The call was at 14:32:07 UTC.",
    "Scheduled for 2026-12-06 15:30:00+01:00.",
    "Your appointment: 12.06.2026, 10:15.",
    "Shipped 6 Dec 2026, expected 9-11 Dec.",
    "Postcode SW1A 1AA, London.",
    "ZIP 90210-1234, Beverly Hills.",
    "Eircode D02 X285, Dublin.",
    "PLZ 80331 München, 1010 Wien, 8001 Zürich.",
    "Code postal 75008 Paris, CP 28013 Madrid.",
    "Our support line is open 24/7.",
    "The app is at version 4.12.0 (build 41203).",
    "Update to firmware 3.2.10.7 and restart.",
    "Kernel 6.8.0-45-generic, Python 3.11.9.",
    "Serial number SN-2025-4F7A-99C1.",
    "MAC address 00:1A:2B:3C:4D:5E of the router.",
    "Error 0x80070005 appears on install.",
    "Product code 8712345678906 (EAN) on the box.",
    "Item 5901234123457 is discontinued.",
    "Gift voucher GV-7731-2025 worth 50 EUR.",
    "Coupon SAVE-20-NOW applies to order #A7-1042.",
    "Ticket ZD-1181177 was merged into ZD-1181180.",
    "Jira CHAT-4821 tracks the bug.",
    "Case 00412345 (Salesforce) is closed.",
    "Reference number 2025120600042 for the transfer.",
    "The bank transfer reference is ORDER 48213.",
    "Room 1204, building C, desk 17.",
    "Flight BA 2490 departs gate B36 at 07:45.",
    "Train ICE 1007 leaves from platform 12.",
    "Seat 23C, booking code XK7Q2P.",
    "Batch LOT 2025-11-07-A3 of the filters.",
    "Dimensions 120 x 60 x 75 cm, 32.5 kg.",
    "Order quantity 1000, unit price 0.85.",
    "Screen 1920x1080 at 144 Hz.",
    "Download speed 250.5 Mbit/s, ping 12 ms.",
    "Percent done: 99.95%.",
    "Score 4.8/5 from 12,345 reviews.",
    "The pallet id is 00340123450000000018.",
    "Loyalty card 6006 4912 3456.",
    "Membership no. 1234 5678 9012.",
    "Customer number 100234567 in our system.",
    "Contract 2025-DE-004812 renews on 1 Jan.",
    "Policy number POL-77-120-4481.",
    "Meter reading 004812 kWh.",
    "The license plate is B-CL 4821.",
    "Use the code 482-113 to confirm.",
    "Your one-time code is 734 912.",
    "Version string 1.2.3-beta+exp.sha.5114f85.",
    "Commit 5114f85c0a9e3b7d0c2e1f4a9b8c7d6e5f4a3b2c fixed it.",
    "Checksum sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 of the request.",
    "Order ref 2024-12-06T15:30:00Z-7731.",
    "Coordinates 48.1351, 11.5820 for the pickup point.",
    "Between 10 and 12 units, about 30-40 minutes.",
]
