from django.test import Client


def test_login_page_renders(db: None) -> None:
    response = Client().get("/admin/login/")
    assert response.status_code == 200
    assert b"unfold" in response.content.lower() or b"Back office" in response.content
