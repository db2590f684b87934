"""Users, businesses and memberships (tenancy), and the staff-user builders."""

from __future__ import annotations

import factory
from django.contrib.auth.models import Permission, User
from django.test import Client

from tenancy.models import Business, BusinessKind, Membership, MembershipRole

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def perms(self: User, create: bool, extracted: list[str] | None, **_: object) -> None:
        """`UserFactory.create(perms=["tenancy.view_business", ...])` grants those permissions."""
        if not create or not extracted:
            self.save()
            return
        for perm in extracted:
            app_label, codename = perm.split(".")
            self.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        self.save()


class OwnerFactory(UserFactory):
    username = factory.Sequence(lambda n: f"owner{n}")
    is_superuser = True


class BusinessFactory(factory.django.DjangoModelFactory[Business]):
    class Meta:
        model = Business
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Business {n}")
    kind = BusinessKind.RETAIL_LPG


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    business = factory.SubFactory(BusinessFactory)
    role = MembershipRole.STAFF


def staff_with_perms(business: Business, perms: list[str], username: str = "staff_a"):  # type: ignore[no-untyped-def]
    user = UserFactory.create(username=username, perms=perms)
    MembershipFactory.create(user=user, business=business)
    return user


def login(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client
