"""A labelled corpus for the personal-data detector (`chatlog.schemas.pii`).

Written for this project: support-chat sentences, each with the personal data it holds
(kind and exact text), and hard negatives that look personal and are not: order,
tracking, RMA and ticket numbers, prices, dates, times, postcodes, versions. The unit
tests measure recall per kind and the false-positive rate on the negatives from it; the
card, IBAN and phone values are the issuers' published test numbers or validated by
`phonenumbers`, never a real person's.
"""

from __future__ import annotations

# Each value is embedded in several sentences, so the surroundings vary too.
EMAILS = [
    "ada.lovelace@example.com", "j.smith+orders@mail.example.org", "chen_wei@example.co.uk",
    "ops-team@sub.example.io", "o'brien@example.ie".replace("'", ""), "x@example.de",
    "first.last@example-shop.com", "support.2024@example.net", "MARIA@EXAMPLE.ES",
    "anna-lena.mueller@example.at",
]  # fmt: skip
PHONES = [
    "+49 30 901820", "+1 650-253-0000", "+44 20 7946 0958", "+33 1 42 68 53 00",
    "+81 3-1234-5678", "+61 2 9374 4000", "+34 912 34 56 78", "+39 06 6988 4857",
    "+31 20 624 1111", "+46 8 123 456 78", "+41 44 668 18 00", "+48 22 123 45 67",
    "+1 (212) 555-0123", "+49 151 23456789", "+353 1 677 0095", "+45 33 12 34 56",
]  # fmt: skip
CARDS = [
    "4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009", "6011000000000004",
    "4012 8888 8888 1881", "5105105105105100", "3782 822463 10005", "371449635398431",
    "6011 1111 1111 1117", "3530111333300000", "4222222222222",
]  # fmt: skip
IBANS = [
    "DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32",
    "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300", "ES91 2100 0418 4502 0005 1332",
    "IT60 X054 2811 1010 0000 0123 456", "CH93 0076 2011 6238 5295 7", "BE68 5390 0754 7034",
    "AT61 1904 3002 3457 3201", "PL61 1090 1014 0000 0712 1981 2874",
]  # fmt: skip
SSNS = ["123-45-6789", "078-05-1121", "219-09-9999", "457-55-5462", "536-90-4399"]
IPS = [
    "192.168.1.20",
    "10.0.0.1",
    "203.0.113.7",
    "2001:db8::8a2e:370:7334",
    "fe80::1ff:fe23:4567:890a",
]
SECRETS = [
    "sk-proj-a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuV",
    "sk-3xAMPLEkeyN0tRealButL0ngEnough1234",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "xoxb-123456789012-abcdefghijkl",
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAKC\n-----END RSA PRIVATE KEY-----",
]

TEMPLATES = [
    "My {what} is {value}, please update it.",
    "you can reach me on {value} after 5pm",
    "{value}",
    "Ticket #CS-90417: customer gave {value} for the refund of order #BW-48213.",
    "(contact: {value})",
]

KINDS = {
    "EMAIL": EMAILS, "PHONE": PHONES, "CARD": CARDS, "IBAN": IBANS, "SSN": SSNS, "IP": IPS,
    "SECRET": SECRETS,
}  # fmt: skip


def positives() -> list[tuple[str, str, str]]:
    """(text, kind, the exact personal string in it)."""
    return [
        (template.format(what=kind.lower(), value=value), kind, value)
        for kind, values in KINDS.items()
        for value in values
        for template in TEMPLATES
    ]


HARD_NEGATIVES = [
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
]
